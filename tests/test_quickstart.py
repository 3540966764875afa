"""The quick start as a user runs it: ``SKIP_INSTALL=1 bash scripts/quickstart.sh`` with its full recipe
(configs/detr/detr_quickstart.yaml, 1000 steps) must end with a detector that visibly works on the sample set.

The one long test of the quick start (630 s measured on the shared 2-core machine under load); it also checks
the training outputs a user watches: the compile log lines, ``metrics.jsonl`` and ``loss_curve.png``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSS_KEYS = {"step", "epoch", "loss", "loss_ce", "loss_bbox", "loss_giou", "lr", "grad_norm", "img_per_s"}


def test_quickstart_detects_every_sample_picture(tmp_path):
    out_dir = tmp_path / "qs"
    env = dict(os.environ, SKIP_INSTALL="1", QUICKSTART_DIR=str(out_dir), PYTHON_RUN=sys.executable,
               PYTHONUNBUFFERED="1")
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "quick start done" in log

    metrics = json.loads((out_dir / "eval" / "metrics.json").read_text())
    assert metrics["bbox"]["AP50"] >= 0.9, metrics["bbox"]
    gt = json.loads((out_dir / "sample_coco" / "annotations" / "instances_sample.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert metrics["num_images"] == len(gt["images"]) == 6
    for image in gt["images"]:
        stem = Path(image["file_name"]).stem
        detections = json.loads((out_dir / "infer" / f"{stem}.json").read_text())
        assert all(d["score"] >= 0.3 for d in detections)
        assert (out_dir / "infer" / f"{stem}.jpg").stat().st_size > 0
        expected = {names[a["category_id"]] for a in gt["annotations"] if a["image_id"] == image["id"]}
        # Every annotated object's class is boxed and named on its picture (the rocket photograph has none).
        assert expected <= {d["category_name"] for d in detections}, (stem, expected, detections)

    train_log = (out_dir / "train" / "train.log").read_text()
    assert "compiling the train step graph (first step)" in train_log
    assert "compiled and ran the first step in" in train_log
    records = [json.loads(line) for line in (out_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 1001, 10))
    assert all(set(r) == LOSS_KEYS for r in records)
    assert records[-1]["lr"] < records[0]["lr"]  # the drop at step 702
    assert (out_dir / "train" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
