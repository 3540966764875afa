"""DeFRCN's few-shot protocol end to end on real images (issue 4, done-when 5), CPU, tiny configs.

COCO (coco_tiny): base training on the 60 base classes -> 1-shot split drawn from train2017 images with
tools/prepare_few_shot_split.py -> tools/run_few_shot.py (randinit surgery, gFSOD fine-tune on all 80 classes,
evaluation with PCB printing overall / base / novel AP, results table). VOC (voc_mini, split 2): base training ->
remove surgery -> 1-shot FSOD fine-tune on the novel classes -> scripts/run_eval_finetune_cpu.sh with PCB,
printing VOC07 AP50. One iteration each, every command in PyNative mode (graph compilation dominated these
tiny runs): the point is that every stage runs on real data and hands over to the next; graph-mode training
and the tiny base training halving its loss are tests/test_defrcn_train.py's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.data.few_shot import COCO_NOVEL_IDS, VOC_NOVEL_CLASSES

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = "configs/defrcn/defrcn_tiny_base_coco.yaml"
TINY_FSOD = "configs/defrcn/defrcn_tiny_fsod_coco.yaml"
QUICK = ["train.max_iter=1", "train.steps=[1]", "train.log_interval=1"]
VOC_DATA = ["data.dataset=voc", "data.voc_split=2", "data.train_split=2007_trainval+2012_trainval",
            "data.val_split=2007_test"]


def _run(cmd, cwd=REPO, env=None):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _train(config, root, out, sets, extra=()):
    _run([sys.executable, "train.py", "--config", config, "--coco_path", str(root), "--output_dir", str(out),
          "--pynative", *extra, "--set", *sets])
    ckpts = sorted(Path(out, "checkpoints").glob("*.ckpt"))
    assert ckpts, f"no checkpoint in {out}"
    return ckpts[-1]


@pytest.fixture(scope="module")
def pcb_model(tmp_path_factory):
    """A tiny random ImageNet-layout extractor (one block per stage) in the converter's key layout."""
    from src.models.defrcn.pcb import PCBFeatureExtractor

    path = tmp_path_factory.mktemp("pcb") / "pcb_tiny.ckpt"
    ms.set_seed(0)
    ms.save_checkpoint(PCBFeatureExtractor(depths=(1, 1, 1, 1)), str(path))
    return path


def _small_coco_train(root, out, num_images=6):
    """train2017 annotations restricted to a few images holding novel objects (keeps PCB's support set small)."""
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    novel = {a["image_id"] for a in data["annotations"] if a["category_id"] in COCO_NOVEL_IDS}
    keep = set(sorted(novel)[:num_images])
    small = {**data, "images": [im for im in data["images"] if im["id"] in keep],
             "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    out.write_text(json.dumps(small))
    return out


def test_coco_base_surgery_gfsod_finetune_pcb_eval(shared_data, tmp_path, pcb_model):
    from tools.prepare_few_shot_split import main as prepare_split
    from tools.run_few_shot import main as run_few_shot

    root = shared_data / "coco_tiny"
    base_ckpt = _train(TINY_BASE, root, tmp_path / "base", QUICK)
    ann = _small_coco_train(root, tmp_path / "train_small.json")
    assert prepare_split(["coco", "--annotations", str(ann), "--output_dir", str(tmp_path / "cocosplit"),
                          "--seeds", "0", "1", "--shots", "1"]) == 0

    out = tmp_path / "gfsod"
    argv = ["--dataset", "coco", "--setting", "gfsod", "--shots", "1", "--seeds", "0", "--base_ckpt", str(base_ckpt),
            "--coco_path", str(root), "--output_dir", str(out), "--config_dir", str(REPO / "configs" / "defrcn"),
            "--config_pattern", Path(TINY_FSOD).name, "--max_eval_images", "6", "--pynative", "--set",
            "data.classes=all",
            f"data.few_shot_root={tmp_path / 'cocosplit'}", "eval.pcb_enable=true", f"eval.pcb_model={pcb_model}",
            *QUICK]
    assert run_few_shot(argv) == 0

    surgery = ms.load_checkpoint(str(out / "model_reset_surgery.ckpt"))
    assert surgery["roi_heads.box_predictor.cls_score.weight"].shape[0] == 81  # 80 classes + background
    run = out / "1shot_seed0"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["pcb"] is True and metrics["classes"] == "all" and metrics["num_images"] == 6
    for key in ("AP", "AP50", "AP75", "bAP", "nAP", "nAP50"):
        assert np.isfinite(metrics["bbox"][key]), key
    log = (run / "eval.log").read_text()
    for title in ("overall AP", "base    bAP", "novel   nAP", "with PCB"):
        assert title in log, title
    assert list((tmp_path / "gfsod" / "mindrecord" / "pcb_prototypes").glob("*1shot_seed0*.npz"))
    table = (out / "results.md").read_text()
    assert "| shot | runs | nAP | nAP50 | nAP75 | bAP | AP |" in table and "| 1 | 1 |" in table
    row = (out / "runs.csv").read_text().splitlines()[1].split(",")
    assert row[:3] == ["1", "0", ""]
    assert float(row[3]) == pytest.approx(100 * metrics["bbox"]["nAP"])


def test_voc_base_surgery_fsod_finetune_pcb_eval(shared_data, tmp_path, pcb_model):
    from tools.model_surgery import main as surgery
    from tools.prepare_few_shot_split import main as prepare_split

    devkit = shared_data / "voc_mini" / "VOCdevkit"
    base_ckpt = _train(TINY_BASE, devkit, tmp_path / "base", [*VOC_DATA, "data.classes=base", *QUICK])
    reset = tmp_path / "model_reset_remove.ckpt"
    assert surgery(["--method", "remove", "--src", str(base_ckpt), "--output", str(reset), "--dataset", "voc",
                    "--split", "2"]) == 0
    assert prepare_split(["voc", "--devkit", str(devkit), "--output_dir", str(tmp_path / "vocsplit"), "--seeds", "0",
                          "1", "--shots", "1"]) == 0
    split_sets = [*VOC_DATA, "data.classes=novel", f"data.few_shot_root={tmp_path / 'vocsplit'}", "data.shot=1",
                  "data.seed=0"]
    ckpt = _train(TINY_FSOD, devkit, tmp_path / "ft", [*split_sets, *QUICK], extra=["--pretrained", str(reset),
                                                                                  "--pretrained_partial"])
    env = {**os.environ, "PCB_MODEL": str(pcb_model), "PYTHON": sys.executable}
    out = _run(["bash", str(REPO / "scripts" / "run_eval_finetune_cpu.sh"), str(REPO / TINY_FSOD), str(devkit),
                str(ckpt), "--output_dir", str(tmp_path / "eval"), "--pynative", "--set",
                *split_sets],
               cwd=tmp_path, env=env)
    assert "novel   nAP" in out and "per-class AP50" in out and "with PCB" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metric"] == "voc07_11point" and metrics["pcb"] is True
    per_class = metrics["bbox"]["per_class_AP50"]
    assert list(per_class) == list(VOC_NOVEL_CLASSES[2])
    assert per_class["sofa"] is not None and per_class["cow"] is None  # sofa is in the 2007 test images, no cow
    assert metrics["bbox"]["nAP50"] == pytest.approx(per_class["sofa"])
