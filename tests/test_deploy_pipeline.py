"""preprocess.py -> tools/infer_mindir.py -> postprocess.py on real coco_tiny images equals eval's evaluate_model.

The three commands run as subprocesses, as the README gives them, on the first 8 val2017 images; the same
checkpoint evaluated in-process by :func:`src.evaluation.evaluate.evaluate_model` on the same 8 images must give the
same detections and the same 12 stats. A second test scores a result folder built from the ground truth (so
the expected AP of 1 does not come from the code under test).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint import save_checkpoint
from src.config import load_config
from src.deploy.bin_io import (
    DeployError,
    image_stem,
    input_specs,
    read_manifest,
    read_tensor,
    tensor_path,
    write_manifest,
    write_tensor,
)
from src.deploy.export import example_inputs, export_graph
from src.deploy.pipeline import postprocess_results
from src.evaluation.evaluate import evaluate_model
from src.models import build_inference_net, build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/detr/detr_tiny.yaml"
FOCUS_TINY = "configs/focus_detr/focus_detr_tiny.yaml"
NUM_IMAGES = 8


def _run(args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("deploy")
    coco = shared_data / "coco_tiny"
    ann_file = coco / "annotations" / "instances_val2017.json"
    cfg = load_config(ROOT / TINY, ["eval.unpadded=false"])  # the exported graph's fixed bucket, as preprocess.py
    ms.set_seed(5)
    checkpoint = save_checkpoint(tmp / "tiny.ckpt", build_model(cfg).network)
    net = build_inference_net(cfg, checkpoint)
    mindir = export_graph(net, example_inputs(160, 160), tmp / "detr_tiny", "MINDIR")
    mindrecord = tmp / "mindrecord"
    stats = evaluate_model(net, cfg, str(coco), "val2017", str(mindrecord), tmp / "eval", max_images=NUM_IMAGES)
    logs = [
        _run(["preprocess.py", "--config", TINY, "--coco_path", str(coco), "--split", "val2017", "--output_dir",
              str(tmp / "bin"), "--max_images", str(NUM_IMAGES), "--mindrecord_dir", str(mindrecord)]),
        _run(["tools/infer_mindir.py", "--mindir", str(mindir), "--input_dir", str(tmp / "bin"), "--output_dir",
              str(tmp / "result")]),
        _run(["postprocess.py", "--config", TINY, "--result_dir", str(tmp / "result"), "--ann_file", str(ann_file),
              "--output_dir", str(tmp / "post")]),
    ]
    return {"tmp": tmp, "cfg": cfg, "eval_stats": stats, "logs": logs, "ann_file": ann_file}


def test_pipeline_metrics_and_detections_equal_evaluate_coco(pipeline):
    tmp = pipeline["tmp"]
    metrics = json.loads((tmp / "post" / "metrics.json").read_text())
    assert metrics["bbox"] == pipeline["eval_stats"]
    assert metrics["num_images"] == NUM_IMAGES
    deployed = json.loads((tmp / "post" / "bbox_results.json").read_text())
    evaluated = json.loads((tmp / "eval" / "bbox_results.json").read_text())
    assert len(deployed) == len(evaluated) == NUM_IMAGES * pipeline["cfg"]["model"]["num_queries"]
    for got, want in zip(deployed, evaluated):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        np.testing.assert_allclose(got["bbox"], want["bbox"], rtol=0, atol=1e-3)
        assert abs(got["score"] - want["score"]) <= 1e-6


def test_cli_output_has_the_table_latency_and_metrics(pipeline):
    preprocess_log, infer_log, post_log = pipeline["logs"]
    assert f"wrote {NUM_IMAGES} images" in preprocess_log
    assert "mean latency" in infer_log
    table = [line for line in post_log.splitlines() if "Average Precision" in line or "Average Recall" in line]
    assert len(table) == 12
    assert '"AP50"' in post_log


def test_preprocess_files_follow_the_protocol(pipeline, shared_data):
    bin_dir, result_dir = pipeline["tmp"] / "bin", pipeline["tmp"] / "result"
    stems = read_manifest(bin_dir)
    evaluated_ids = list(dict.fromkeys(r["image_id"] for r in json.loads(
        (pipeline["tmp"] / "eval" / "bbox_results.json").read_text())))
    assert stems == [image_stem(i) for i in evaluated_ids]  # evaluation order
    assert read_manifest(result_dir) == stems
    manifest = json.loads((bin_dir / "manifest.json").read_text())
    assert manifest["images"] == stems and manifest["image_size"] == [160, 160]
    gt = {im["id"]: im for im in json.loads(pipeline["ann_file"].read_text())["images"]}
    specs = input_specs(160, 160)
    for stem in stems:
        side = json.loads((bin_dir / f"{stem}.json").read_text())
        info = gt[side["image_id"]]
        assert stem == f"{info['id']:012d}" and info["file_name"].startswith(stem)
        assert side["orig_size"] == [info["height"], info["width"]]
        new_h, new_w = side["resized_size"]
        # detr's eval resize: short side at most 128, long side at most 160, aspect ratio kept within a pixel.
        assert max(new_h, new_w) <= 160 and min(new_h, new_w) <= 128
        assert abs(new_h * info["width"] - new_w * info["height"]) <= max(info["height"], info["width"])
        assert side["scale"] == pytest.approx([new_h / info["height"], new_w / info["width"]])
        image, mask, orig_size = (read_tensor(tensor_path(bin_dir, stem, i), s) for i, s in enumerate(specs))
        assert orig_size.tolist() == [side["orig_size"]]
        assert not mask[0, :new_h, :new_w].any() and mask[0].sum() == 160 * 160 - new_h * new_w
        assert np.all(image[0][:, mask[0]] == 0) and np.abs(image[0, :, :new_h, :new_w]).sum() > 0
        for index in range(3):
            assert tensor_path(result_dir, stem, index).is_file()


def _ground_truth_results(result_dir, data, image_ids, num_queries=100, no_object=91):
    """Write runner outputs made from the annotations (xyxy original pixels, score 1) for ``image_ids``."""
    Path(result_dir).mkdir(parents=True, exist_ok=True)
    stems = []
    for image_id in image_ids:
        anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a.get("iscrowd", 0)]
        scores = np.zeros((1, num_queries), np.float32)
        labels = np.full((1, num_queries), no_object, np.int32)
        boxes = np.zeros((1, num_queries, 4), np.float32)
        for row, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            scores[0, row], labels[0, row], boxes[0, row] = 1.0, ann["category_id"], [x, y, x + w, y + h]
        stem = image_stem(image_id)
        for index, array in enumerate((scores, labels, boxes)):
            write_tensor(tensor_path(result_dir, stem, index), array)
        stems.append(stem)
    write_manifest(result_dir, stems)
    return stems


def test_postprocess_scores_ground_truth_boxes_as_perfect(tmp_path, shared_data):
    """Outputs built from the annotations (xyxy original pixels, score 1) must score AP = AR = 1."""
    ann_file = shared_data / "coco_tiny" / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    stems = _ground_truth_results(tmp_path, data, [image["id"] for image in data["images"][:5]])
    stats = postprocess_results(tmp_path, ann_file, tmp_path / "out")
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "out" / "bbox_results.json").read_text())
    assert all(r["category_id"] != 91 for r in results)

    (tmp_path / f"{stems[0]}_2.bin").write_bytes(b"\x00" * 12)
    with pytest.raises(DeployError, match=f"{stems[0]}_2.bin' holds 12 bytes"):
        postprocess_results(tmp_path, ann_file, tmp_path / "out")


def test_postprocess_cli_keeps_every_coco_id_for_focus_detr(tmp_path, shared_data):
    """Focus-DETR has 80 sigmoid classes but labels detections with raw COCO ids up to 90: none may be dropped."""
    ann_file = shared_data / "coco_tiny" / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    high = sorted({a["image_id"] for a in data["annotations"] if a["category_id"] >= 80 and not a.get("iscrowd", 0)})
    _ground_truth_results(tmp_path / "result", data, high[:5])
    out = _run(["postprocess.py", "--config", FOCUS_TINY, "--result_dir", str(tmp_path / "result"), "--ann_file",
                str(ann_file), "--output_dir", str(tmp_path / "post")])
    assert len([line for line in out.splitlines() if "Average Precision" in line]) == 6
    metrics = json.loads((tmp_path / "post" / "metrics.json").read_text())
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AR100"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "post" / "bbox_results.json").read_text())
    assert any(r["category_id"] >= 80 for r in results)


def test_missing_manifest_names_the_step_that_writes_it(tmp_path):
    with pytest.raises(DeployError, match="run preprocess.py"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.txt").write_text("000000005001\n5001\n")
    with pytest.raises(DeployError, match="line 2"):
        read_manifest(tmp_path)
