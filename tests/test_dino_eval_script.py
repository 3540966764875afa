"""``scripts/DINO_eval_ms_coco.sh``: the Focus-DETR evaluation command of the published README, end to end.

A randomly initialized tiny Focus-DETR is saved as a checkpoint and evaluated on real coco_tiny val2017 images
through the script, run as a user would from the repository root with the dataset path relative to it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from src.checkpoint import save_checkpoint
from src.config import load_config
from src.evaluation.coco_evaluator import STAT_NAMES
from src.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/DINO_eval_ms_coco.sh"
TINY = "configs/focus_detr/focus_detr_tiny.yaml"
DEFAULT_CONFIG = ROOT / "configs" / "focus_detr" / "focus_detr_r50_4scale_12ep.yaml"


def _run(args, cwd=ROOT):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env.pop("DEVICE_TARGET", None)  # the script's CPU default is under test
    return subprocess.run(["bash", SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_script_prints_the_table_for_a_focus_checkpoint(tmp_path, shared_data):
    ckpt = save_checkpoint(tmp_path / "focus_tiny.ckpt", build_model(load_config(ROOT / TINY)).network)
    coco = os.path.relpath(shared_data / "coco_tiny", ROOT)
    proc = _run([coco, str(ckpt), TINY, "--max_images", "3", "--output_dir", str(tmp_path / "eval")])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    table = [line for line in out.splitlines() if "Average Precision" in line or "Average Recall" in line]
    assert len(table) == 12, out[-4000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 3
    assert set(metrics["bbox"]) == set(STAT_NAMES)
    saved = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())
    assert saved["model"]["name"] == "focus_detr"
    assert saved["model"]["embed_dim"] == load_config(ROOT / TINY)["model"]["embed_dim"]


def test_config_defaults_to_r50_4scale_12ep(tmp_path, shared_data):
    # eval.py records the config before loading the checkpoint, so a missing checkpoint shows which config the
    # script chose without running the R50 model; the failure must name the checkpoint.
    missing = tmp_path / "missing.ckpt"
    proc = _run([str(shared_data / "coco_tiny"), str(missing)])
    assert proc.returncode != 0
    assert "missing.ckpt" in proc.stdout + proc.stderr
    saved = yaml.safe_load((tmp_path / "eval_missing_val2017" / "config.yaml").read_text())
    expected = load_config(DEFAULT_CONFIG)
    assert saved["model"] == expected["model"]
    assert saved["data"]["eval_size"] == expected["data"]["eval_size"]


def test_usage_error_without_arguments():
    proc = _run(["only_one_argument"])
    assert proc.returncode == 2
    assert "usage" in proc.stderr
