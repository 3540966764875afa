"""CocoEvaluator against the official cocoapi reference detections and their published stats."""

import json
import os
from collections import defaultdict

import numpy as np
import pytest

from src import fileio
from src.evaluation.coco_evaluator import STAT_NAMES, CocoEvaluator, evaluate_results_file

NO_OBJECT = 91


@pytest.fixture(scope="module")
def reference(shared_data):
    root = shared_data / "coco_eval_reference"
    expected = json.loads((root / "expected_bbox_stats.json").read_text())
    assert expected["stats_order"] == list(STAT_NAMES)
    return {
        "gt": root / expected["ground_truth"],
        "results": root / expected["detections"],
        "stats": expected["stats"],
    }


def _padded_batches(results, image_ids, batch_size=8):
    """Reference detections as post-process-shaped batches: xyxy boxes, no-object label on padded queries."""
    per_image = defaultdict(list)
    for det in results:
        per_image[det["image_id"]].append(det)
    num_queries = max(len(dets) for dets in per_image.values()) + 1
    for start in range(0, len(image_ids), batch_size):
        ids = image_ids[start : start + batch_size]
        scores = np.zeros((len(ids), num_queries))
        labels = np.full((len(ids), num_queries), NO_OBJECT, np.int32)
        boxes = np.zeros((len(ids), num_queries, 4))
        for row, image_id in enumerate(ids):
            for q, det in enumerate(per_image[image_id]):
                x, y, w, h = det["bbox"]
                scores[row, q], labels[row, q] = det["score"], det["category_id"]
                boxes[row, q] = (x, y, x + w, y + h)
        yield np.array(ids), scores, labels, boxes


def test_reproduces_reference_stats_through_update(reference, tmp_path):
    evaluator = CocoEvaluator(reference["gt"])
    results = json.loads(reference["results"].read_text())
    # Every GT image is run; one of them has no reference detection and still counts.
    image_ids = sorted(evaluator.coco_gt.getImgIds())
    assert len({det["image_id"] for det in results}) < len(image_ids)
    for batch in _padded_batches(results, image_ids):
        evaluator.update(*batch)
    # A padding row (image id -1) as the eval pipeline emits for an incomplete last batch is ignored.
    evaluator.update(np.array([-1]), np.ones((1, 2)), np.ones((1, 2), np.int32), np.ones((1, 2, 4)))
    assert len(evaluator.results) == len(results)
    assert evaluator.image_ids == image_ids

    stats = evaluator.evaluate()
    assert list(stats) == list(STAT_NAMES)
    np.testing.assert_allclose([stats[name] for name in STAT_NAMES], reference["stats"], rtol=0, atol=1e-6)

    written = evaluator.write_results(tmp_path / "bbox_results.json")
    round_trip = json.loads(written.read_text())
    assert all(isinstance(det["image_id"], int) and isinstance(det["score"], float) for det in round_trip)
    assert set(round_trip[0]) == {"image_id", "category_id", "bbox", "score"}
    file_stats = evaluate_results_file(reference["gt"], written)
    np.testing.assert_allclose([file_stats[name] for name in STAT_NAMES], reference["stats"], rtol=0, atol=1e-6)

    metrics = json.loads(evaluator.write_metrics(tmp_path / "metrics.json").read_text())
    assert metrics["bbox"] == stats and metrics["num_images"] == len(image_ids)
    assert sorted(os.listdir(tmp_path)) == ["bbox_results.json", "metrics.json"]


def test_evaluate_results_file_matches_reference(reference):
    stats = evaluate_results_file(reference["gt"], reference["results"])
    np.testing.assert_allclose([stats[name] for name in STAT_NAMES], reference["stats"], rtol=0, atol=1e-6)


def test_zero_detections_do_not_crash(reference, tmp_path, caplog):
    evaluator = CocoEvaluator(reference["gt"])
    image_ids = sorted(evaluator.coco_gt.getImgIds())[:4]
    labels = np.full((4, 3), NO_OBJECT, np.int32)
    evaluator.update(np.array(image_ids), np.ones((4, 3)), labels, np.ones((4, 3, 4)))
    with caplog.at_level("WARNING"):
        stats = evaluator.evaluate()
    assert "zero detections" in caplog.text
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
    assert all(value in (0.0, -1.0) for value in stats.values())
    evaluator.write_results(tmp_path / "empty.json")
    assert json.loads((tmp_path / "empty.json").read_text()) == []

    nothing_run = CocoEvaluator(evaluator.coco_gt).evaluate()
    assert nothing_run == {name: -1.0 for name in STAT_NAMES}


def test_metrics_written_atomically(reference, tmp_path, monkeypatch):
    evaluator = CocoEvaluator(reference["gt"])
    with pytest.raises(RuntimeError, match="before evaluate"):
        evaluator.write_metrics(tmp_path / "metrics.json")
    evaluator.stats = {name: 0.5 for name in STAT_NAMES}
    target = evaluator.write_metrics(tmp_path / "metrics.json")
    before = target.read_bytes()

    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    evaluator.stats = {name: 0.1 for name in STAT_NAMES}
    with pytest.raises(OSError, match="rename failed"):
        evaluator.write_metrics(target)
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_update_rejects_bad_input(reference):
    evaluator = CocoEvaluator(reference["gt"])
    with pytest.raises(ValueError, match=r"boxes \[B, Q, 4\]"):
        evaluator.update(np.array([42]), np.ones((1, 3)), np.ones((1, 3), np.int32), np.ones((1, 3, 2)))
    with pytest.raises(KeyError, match="image id 123456789"):
        evaluator.update(np.array([123456789]), np.ones((1, 1)), np.ones((1, 1), np.int32), np.ones((1, 1, 4)))
