"""End to end on real coco_tiny images with the tiny config: the launch scripts, resume, msrun, eval, infer.

These run the user-facing commands as subprocesses, exactly as the README gives them.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.checkpoint import checkpoint_arrays
from src.config import load_config
from src.evaluation.coco_evaluator import STAT_NAMES

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/detr/detr_tiny.yaml"
STEP_LINE = re.compile(r"step (\d+)/\d+ loss ([-\w.]+)")


def _run(args, tmp_path, extra_env=None, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, OUTPUT_ROOT=str(tmp_path / "outputs"), PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra_env or {})
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """Two steps of the standalone CPU script on 4 real coco_tiny train images."""
    tmp_path = tmp_path_factory.mktemp("train")
    out = _run(["bash", "scripts/run_standalone_train_cpu.sh", "tiny", TINY,
                "--coco_path", str(shared_data / "coco_tiny"), "--max_images", "4", "--max_steps", "2"], tmp_path)
    run_dir = tmp_path / "outputs" / "tiny"
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    return {"tmp": tmp_path, "log": out, "run_dir": run_dir, "checkpoints": checkpoints}


def test_standalone_script_gives_finite_losses_and_a_checkpoint(trained):
    steps = STEP_LINE.findall(trained["log"])
    assert [int(s) for s, _ in steps] == [1, 2]
    assert all(np.isfinite(float(loss)) for _, loss in steps)
    assert len(trained["checkpoints"]) == 1
    assert (trained["run_dir"] / "config.yaml").is_file()
    assert (trained["run_dir"] / "train.log").is_file()
    assert not list((trained["run_dir"] / "checkpoints").glob("*.tmp*"))


def test_training_logs_compilation_and_writes_metrics_jsonl_and_loss_curve(trained):
    log = (trained["run_dir"] / "train.log").read_text()
    assert "compiling the train step graph (first step)" in log
    assert re.search(r"compiled and ran the first step in \d+\.\d s", log)
    records = [json.loads(line) for line in (trained["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in records] == [(1, 0), (2, 0)]  # 4 images, batch 2: one epoch
    assert set(records[0]) == {"step", "epoch", "loss", "loss_ce", "loss_bbox", "loss_giou", "lr", "grad_norm",
                               "img_per_s"}
    assert records[0]["img_per_s"] == 0.0  # the compile step is left out of the speed
    assert records[1]["img_per_s"] > 0
    assert records[0]["lr"] == pytest.approx(load_config(ROOT / TINY)["train"]["lr"], rel=1e-6)  # float32 in-graph
    assert (trained["run_dir"] / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_defaults_to_a_folder_per_checkpoint_with_provenance(trained, shared_data, tmp_path):
    ckpt = trained["checkpoints"][0]
    out = _run([sys.executable, "eval.py", "--config", TINY, "--coco_path", str(shared_data / "coco_tiny"),
                "--checkpoint", str(ckpt), "--max_images", "2"], tmp_path)
    folder = ckpt.parent / f"eval_{ckpt.stem}_val2017"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(ckpt.resolve())
    assert metrics["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert metrics["split"] == "val2017"
    assert metrics["config"] == load_config(ROOT / TINY)
    assert (folder / "bbox_results.json").is_file()
    # The MindRecord cache is shared by every checkpoint of the folder, not rebuilt per checkpoint.
    assert (ckpt.parent / "eval_val2017" / "mindrecord" / "coco_val2017_all.stamp.json").is_file()
    assert not (folder / "mindrecord").exists()
    assert re.search(r"evaluating val2017: 2/2 img \(100%\), [\d.]+ img/s, ETA", out), out[-2000:]


def test_resume_continues_at_the_next_step_with_the_same_state(trained, shared_data):
    first = trained["checkpoints"][0]
    saved = checkpoint_arrays(first)
    out = _run(["bash", "scripts/run_standalone_train_cpu.sh", "tiny", TINY,
                "--coco_path", str(shared_data / "coco_tiny"), "--max_images", "4", "--max_steps", "3",
                "--resume", str(first)], trained["tmp"])
    assert "at epoch 1, step 2" in out
    assert [int(s) for s, _ in STEP_LINE.findall(out)] == [3]
    resumed = max((trained["run_dir"] / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    after = checkpoint_arrays(resumed)
    assert int(after["step"]) == 3
    # One step later the trainable weights moved, the frozen backbone did not.
    assert np.array_equal(after["backbone.body.conv1.weight"], saved["backbone.body.conv1.weight"])
    assert not np.array_equal(after["class_embed.weight"], saved["class_embed.weight"])


def test_distributed_cpu_script_keeps_ranks_identical(tmp_path, shared_data):
    out = _run(["bash", "scripts/run_distribute_train_cpu.sh", "dist", TINY,
                "--coco_path", str(shared_data / "coco_tiny"), "--max_images", "8", "--max_steps", "2"],
               tmp_path, {"DEVICE_NUM": "2", "MASTER_PORT": "8131"})
    logs = sorted((tmp_path / "outputs" / "dist" / "msrun_logs").glob("worker_*.log"))
    assert len(logs) == 2, out
    digests = [re.findall(r"parameter digest (\w+)", log.read_text()) for log in logs]
    assert all(len(d) == 1 for d in digests), digests
    assert digests[0] == digests[1]
    ckpts = list((tmp_path / "outputs" / "dist" / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 1  # rank 0 only


def test_eval_prints_the_table_and_writes_metrics(trained, shared_data, tmp_path):
    out = _run([sys.executable, "eval.py", "--config", TINY, "--coco_path", str(shared_data / "coco_tiny"),
                "--checkpoint", str(trained["checkpoints"][0]), "--output_dir", str(tmp_path / "eval")], tmp_path)
    table = [line for line in out.splitlines() if "Average Precision" in line or "Average Recall" in line]
    assert len(table) == 12
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 80
    assert set(metrics["bbox"]) == set(STAT_NAMES)
    results = json.loads((tmp_path / "eval" / "bbox_results.json").read_text())
    gt = json.loads((shared_data / "coco_tiny" / "annotations" / "instances_val2017.json").read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in gt["images"]}


def test_infer_writes_json_and_picture(trained, shared_data, tmp_path):
    images = sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[:2]
    _run([sys.executable, "infer.py", "--config", TINY, "--checkpoint", str(trained["checkpoints"][0]),
          "--images", *map(str, images), "--output_dir", str(tmp_path / "infer"), "--score_threshold", "0"],
         tmp_path)
    for image in images:
        detections = json.loads((tmp_path / "infer" / f"{image.stem}.json").read_text())
        # Threshold 0 keeps every query.
        assert len(detections) == load_config(ROOT / TINY)["model"]["num_queries"]
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True)
        for det in detections:
            assert set(det) == {"bbox", "score", "category_id", "category_name"}
            assert len(det["bbox"]) == 4
        assert (tmp_path / "infer" / f"{image.stem}.jpg").stat().st_size > 0
