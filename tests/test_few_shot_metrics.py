"""Few-shot COCO metrics (all / base / novel via catIds) and the shots x seeds summary."""

import contextlib
import csv
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.data.few_shot import COCO_BASE_IDS, COCO_NOVEL_IDS
from src.evaluation.few_shot_metrics import (
    FewShotCocoEvaluator,
    coco_few_shot_stats,
    run_cocoeval_on_categories,
    summarize_runs,
    write_summary,
)


@pytest.fixture(scope="module")
def reference(shared_data):
    root = shared_data / "coco_eval_reference"
    expected = json.loads((root / "expected_bbox_stats.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(root / expected["ground_truth"]))
    results = json.loads((root / expected["detections"]).read_text())
    return coco_gt, results, dict(zip(expected["stats_order"], expected["stats"]))


def _pycocotools_stats(coco_gt, results, cat_ids):
    """An independent restricted COCOeval run, as TFA / DeFRCN set it up."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
        coco_eval.params.catIds = list(cat_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def test_overall_base_and_novel_match_pycocotools(reference):
    coco_gt, results, expected = reference
    stats = coco_few_shot_stats(coco_gt, results)
    assert stats["AP"] == pytest.approx(expected["AP"], abs=1e-6)
    assert stats["AP50"] == pytest.approx(expected["AP50"], abs=1e-6)
    assert stats["AP75"] == pytest.approx(expected["AP75"], abs=1e-6)
    for prefix, ids in (("b", COCO_BASE_IDS), ("n", COCO_NOVEL_IDS)):
        independent = _pycocotools_stats(coco_gt, results, ids)
        for index, name in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
            assert stats[prefix + name] == pytest.approx(independent[index], abs=1e-12), prefix + name
    # the subsets really differ from the overall number and from each other
    assert stats["bAP"] != pytest.approx(stats["nAP"], abs=1e-3)
    assert stats["nAP"] != pytest.approx(stats["AP"], abs=1e-3)
    assert "nAR1" not in stats  # only the AP-type stats per subset, as DeFRCN reports


def test_restricting_to_one_category_ignores_the_others(reference):
    coco_gt, results, _ = reference
    only_cats = run_cocoeval_on_categories(coco_gt, [r for r in results if r["category_id"] == 18], [18])
    with_all = run_cocoeval_on_categories(coco_gt, results, [18])
    assert only_cats == with_all
    assert with_all["AP"] == pytest.approx(_pycocotools_stats(coco_gt, results, [18])[0], abs=1e-12)
    with pytest.raises(ValueError):
        run_cocoeval_on_categories(coco_gt, results, [])


def test_few_shot_evaluator_reuses_coco_evaluator_update(reference):
    coco_gt, results, expected = reference
    image_ids = sorted(coco_gt.getImgIds())
    evaluator = FewShotCocoEvaluator(coco_gt)
    for image_id in image_ids:
        mine = [r for r in results if r["image_id"] == image_id]
        q = max(len(mine), 1)
        scores, labels, boxes = np.zeros((1, q)), np.full((1, q), 91), np.zeros((1, q, 4))
        for k, r in enumerate(mine):
            x, y, w, h = r["bbox"]
            scores[0, k], labels[0, k], boxes[0, k] = r["score"], r["category_id"], [x, y, x + w, y + h]
        evaluator.update([image_id], scores, labels, boxes)
    stats = evaluator.evaluate()
    assert stats["AP"] == pytest.approx(expected["AP"], abs=1e-6)
    assert stats["nAP"] == pytest.approx(_pycocotools_stats(coco_gt, results, COCO_NOVEL_IDS)[0], abs=1e-6)


def test_summary_by_hand(tmp_path):
    runs = {
        2: [{"nAP50": 40.0, "bAP50": 70.0}, {"nAP50": 44.0, "bAP50": 70.0}],
        1: [{"nAP50": 10.0, "bAP50": 60.0}, {"nAP50": 20.0, "bAP50": 62.0}, {"nAP50": 30.0, "bAP50": 64.0}],
    }
    rows = summarize_runs(runs)
    assert [row["shot"] for row in rows] == [1, 2] and [row["runs"] for row in rows] == [3, 2]
    # 1-shot nAP50: mean 20, population variance (100 + 0 + 100) / 3 -> CI 1.96 * sqrt(200 / 3) / sqrt(3)
    assert rows[0]["nAP50"] == pytest.approx(20.0)
    assert rows[0]["nAP50_ci95"] == pytest.approx(1.96 * math.sqrt(200 / 3) / math.sqrt(3))
    # 1-shot bAP50: mean 62, variance (4 + 0 + 4) / 3
    assert rows[0]["bAP50_ci95"] == pytest.approx(1.96 * math.sqrt(8 / 3) / math.sqrt(3))
    # 2-shot nAP50: mean 42, std 2 -> 1.96 * 2 / sqrt(2); identical runs -> CI 0
    assert rows[1]["nAP50"] == pytest.approx(42.0)
    assert rows[1]["nAP50_ci95"] == pytest.approx(1.96 * 2 / math.sqrt(2))
    assert rows[1]["bAP50"] == 70.0 and rows[1]["bAP50_ci95"] == 0.0

    md_path, csv_path = write_summary(rows, tmp_path / "out" / "summary.md", tmp_path / "out" / "summary.csv")
    markdown = md_path.read_text().splitlines()
    assert markdown[0] == "| shot | runs | nAP50 | bAP50 |"
    assert markdown[3] == "| 2 | 2 | 42.00 ± 2.77 | 70.00 ± 0.00 |"  # 1.96 * sqrt(2) = 2.772
    table = list(csv.DictReader(csv_path.open()))
    assert [r["shot"] for r in table] == ["1", "2"]
    assert float(table[0]["nAP50_ci95"]) == pytest.approx(rows[0]["nAP50_ci95"], rel=1e-12)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.csv", "summary.md"]  # no temp left


def test_summary_rejects_missing_runs_and_metrics():
    with pytest.raises(ValueError):
        summarize_runs({})
    with pytest.raises(ValueError, match="2-shot"):
        summarize_runs({1: [{"nAP50": 1.0}], 2: []})
    with pytest.raises(ValueError, match="nAP50"):
        summarize_runs({1: [{"nAP50": 1.0}, {"bAP50": 2.0}]})
