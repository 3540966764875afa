"""The shell launchers have no default model and guess nothing: a missing CONFIG (or ROOT) is a usage error.

scripts/train.sh and scripts/eval.sh stop with exit code 2 and a usage line before starting Python.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, args", [
    ("run_standalone_train_cpu.sh", ["exp"]),
    ("run_standalone_train_cpu.sh", ["exp", "--coco_path", "coco"]),
    ("run_distribute_train_gpu.sh", ["exp", "--max_steps", "1"]),
    ("run_standalone_finetune_cpu.sh", ["exp", "--pretrained", "x.ckpt"]),
    ("run_eval_pretrain_cpu.sh", ["configs/defrcn/defrcn_det_r101_base_coco.yaml", "ckpt"]),
    ("run_eval_cpu.sh", ["configs/detr/detr_r50.yaml", "ckpt"]),
])
def test_launcher_without_config_or_root_is_a_usage_error(tmp_path, script, args):
    env = dict(os.environ, PYTHON=str(tmp_path / "no-python"), OUTPUT_ROOT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: ") and "CONFIG" in proc.stderr
    assert not (tmp_path / "out").exists()
