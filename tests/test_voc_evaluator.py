"""VOC AP (devkit voc_eval semantics): hand-computed cases and the real voc_mini annotations."""

import json
import math

import numpy as np
import pytest

from src.data.few_shot import VOC_BASE_CLASSES, VOC_NOVEL_CLASSES
from src.data.voc import VOC_CLASSES, VocRecord, load_voc_split
from src.evaluation.voc_evaluator import VocEvaluator, devkit_iou, voc_ap, voc_eval_class

# A 10 x 10 px object whose XML says xmin=1, ymin=1, xmax=10, ymax=10 reads as 0-based (0, 0, 10, 10).
GT = np.array([[0.0, 0.0, 10.0, 10.0]])
FAR = [100.0, 100.0, 110.0, 110.0]


def _record(file_id, boxes, labels, difficult=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return VocRecord(file_id, f"{file_id}.jpg", 500, 500, boxes, np.asarray(labels, np.int32), difficult)


def _continuous_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_devkit_iou_adds_one_pixel_and_equals_continuous_iou_of_0_based_boxes():
    # devkit frame: (1,1,10,10) is 10x10 px; (6,1,15,10) overlaps it on columns 6..10 = 5 px -> 50 / 150
    np.testing.assert_allclose(devkit_iou([1, 1, 10, 10], [[1, 1, 10, 10], [6, 1, 15, 10], [11, 1, 20, 10]]),
                               [1.0, 50 / 150, 0.0])
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = np.sort(rng.uniform(0, 50, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        b = np.sort(rng.uniform(0, 50, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        shifted = np.array([1.0, 1.0, 0.0, 0.0])
        assert devkit_iou(a + shifted, [b + shifted])[0] == pytest.approx(_continuous_iou(a, b), abs=1e-9)


def test_one_gt_two_detections_false_positive_first():
    # ranked: FP (0.9), TP (0.8) -> recall [0, 1], precision [0, 1/2]; every recall level's best precision is
    # 1/2 under both metrics
    dets = [("a", 0.8, GT[0]), ("a", 0.9, FAR)]
    for use_07 in (True, False):
        rec, prec, ap = voc_eval_class(dets, {"a": (GT, np.zeros(1, bool))}, use_07_metric=use_07)
        np.testing.assert_allclose(rec, [0, 1])
        np.testing.assert_allclose(prec, [0, 0.5])
        assert ap == pytest.approx(0.5)


def test_duplicate_detection_is_a_false_positive():
    dets = [("a", 0.9, GT[0]), ("a", 0.8, GT[0] + 0.5)]
    rec, prec, _ = voc_eval_class(dets, {"a": (GT, np.zeros(1, bool))})
    np.testing.assert_allclose(rec, [1, 1])
    np.testing.assert_allclose(prec, [1, 0.5])


def test_threshold_is_strict_at_iou_one_half():
    gt = {"a": (GT, np.zeros(1, bool))}
    # half the object: devkit (1,1,10,5) has 10x5 = 50 px of the 100 px object -> IoU exactly 0.5 -> FP
    assert voc_eval_class([("a", 1.0, [0, 0, 10, 5])], gt)[2] == 0.0
    assert voc_eval_class([("a", 1.0, [0, 0, 10, 5.2])], gt)[2] == 1.0


def test_eleven_point_and_area_metrics_differ_by_hand():
    # 3 positives; ranked TP, FP, TP -> recall [1/3, 1/3, 2/3], precision [1, 1/2, 2/3]
    gt_boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float64)
    dets = [("a", 0.9, gt_boxes[0]), ("a", 0.8, FAR), ("a", 0.7, gt_boxes[1])]
    gt = {"a": (gt_boxes, np.zeros(3, bool))}
    # 11-point: levels 0 .. 0.3 reach recall 1/3 (best precision 1), 0.4 .. 0.6 only recall 2/3 (2/3),
    # 0.7 .. 1.0 nothing (0)
    expected_07 = (4 * 1.0 + 3 * (2 / 3)) / 11
    # area: recall 0 -> 1/3 at envelope precision 1, 1/3 -> 2/3 at 2/3, nothing beyond
    expected_area = (1 / 3) * 1.0 + (1 / 3) * (2 / 3)
    assert voc_eval_class(dets, gt, use_07_metric=True)[2] == pytest.approx(expected_07)
    assert voc_eval_class(dets, gt, use_07_metric=False)[2] == pytest.approx(expected_area)
    assert expected_07 != pytest.approx(expected_area)
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0 and voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


def test_difficult_ground_truth_is_neither_tp_nor_fp():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float64)
    gt = {"a": (boxes, np.array([False, True]))}
    dets = [("a", 0.95, boxes[1]), ("a", 0.9, boxes[0]), ("a", 0.5, boxes[1])]
    rec, prec, ap = voc_eval_class(dets, gt)
    # one positive; the two hits on the difficult box change nothing
    np.testing.assert_allclose(rec, [0, 1, 1])
    np.testing.assert_allclose(prec, [0, 1, 1])
    assert ap == pytest.approx(1.0)
    # a box overlapping a difficult object best is ignored even if it also overlaps a normal one above 0.5
    near = {"a": (np.array([[0, 0, 10, 10], [0, 0, 10, 9]], np.float64), np.array([False, True]))}
    rec, _, ap = voc_eval_class([("a", 1.0, [0, 0, 10, 9])], near)
    assert rec[0] == 0.0 and ap == 0.0


def test_classes_without_positives_are_nan_and_left_out_of_means():
    classes = ("cat", "dog", "cow")
    records = [_record("a", [[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1], [False, True])]
    evaluator = VocEvaluator(records, classes, base_classes=("cat",), novel_classes=("dog", "cow"))
    evaluator.update(["a", None], np.array([[0.9, 0.8], [0.7, 0.6]]), np.array([[0, 1], [0, 0]]),
                     np.array([[[0, 0, 10, 10], [20, 20, 40, 40]], [[0, 0, 1, 1], [0, 0, 1, 1]]], float))
    stats = evaluator.evaluate()
    assert stats["per_class_AP50"]["cat"] == 1.0
    assert math.isnan(stats["per_class_AP50"]["dog"])  # only a difficult object
    assert math.isnan(stats["per_class_AP50"]["cow"])  # no object at all
    assert stats["AP50"] == 1.0 and stats["bAP50"] == 1.0 and math.isnan(stats["nAP50"])


def test_update_validates_input(tmp_path):
    evaluator = VocEvaluator([_record("a", GT, [0])], ("cat",))
    with pytest.raises(KeyError, match="zzz"):
        evaluator.update(["zzz"], np.ones((1, 1)), np.zeros((1, 1), int), np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match="boxes"):
        evaluator.update(["a"], np.ones((1, 2)), np.zeros((1, 2), int), np.zeros((1, 1, 4)))
    with pytest.raises(RuntimeError):
        evaluator.write_metrics(tmp_path / "m.json")
    # label 1 is the no-object class of a one-class detector: dropped
    evaluator.update(["a"], np.array([[0.9, 0.8]]), np.array([[1, 0]]), np.array([[FAR, GT[0]]]))
    assert evaluator.evaluate()["AP50"] == 1.0
    written = json.loads(evaluator.write_metrics(tmp_path / "m.json").read_text())
    assert written["num_detections"] == 1 and written["metric"] == "voc07_11point"


@pytest.fixture(scope="module")
def voc_mini_records(shared_data):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    return load_voc_split(devkit, 2007, "test") + load_voc_split(devkit, 2012, "trainval")


def _evaluate_with_boxes(records, box_fn, split=None, use_07_metric=True):
    kwargs = {} if split is None else {"base_classes": VOC_BASE_CLASSES[split],
                                       "novel_classes": VOC_NOVEL_CLASSES[split]}
    evaluator = VocEvaluator(records, VOC_CLASSES, use_07_metric=use_07_metric, **kwargs)
    for rec in records:
        boxes = np.stack([box_fn(box, VOC_CLASSES[label]) for box, label in zip(rec.boxes, rec.labels)])
        scores = np.linspace(1.0, 0.5, len(boxes))[None]
        evaluator.update([rec.file_id], scores, rec.labels[None], boxes[None])
    return evaluator.evaluate()


def test_voc_mini_ground_truth_as_detections_scores_one(voc_mini_records):
    present = {VOC_CLASSES[label] for rec in voc_mini_records for label, diff in zip(rec.labels, rec.difficult)
               if not diff}
    assert any(rec.difficult.any() for rec in voc_mini_records)  # the data exercises difficult objects
    for use_07 in (True, False):
        stats = _evaluate_with_boxes(voc_mini_records, lambda box, _: box, use_07_metric=use_07)
        for name in VOC_CLASSES:
            ap = stats["per_class_AP50"][name]
            assert (ap == pytest.approx(1.0)) if name in present else math.isnan(ap), name
        assert stats["AP50"] == pytest.approx(1.0) and stats["AP"] == pytest.approx(1.0)


def _shift(box, _):
    # 34 % of the width to the right: IoU with itself (0.66 w h) / (1.34 w h) < 0.5
    return box + np.array([1, 0, 1, 0], np.float32) * 0.34 * (box[2] - box[0])


def test_voc_mini_shifted_below_half_iou_scores_zero(voc_mini_records):
    for rec in voc_mini_records:  # precondition: no shifted box overlaps any same-class object above 0.5
        for box, label in zip(rec.boxes, rec.labels):
            same = rec.boxes[rec.labels == label]
            assert max(_continuous_iou(_shift(box, None), other) for other in same) < 0.5
    stats = _evaluate_with_boxes(voc_mini_records, _shift)
    finite = [v for v in stats["per_class_AP50"].values() if not math.isnan(v)]
    assert finite and all(v == 0.0 for v in finite)
    assert stats["AP50"] == 0.0


def test_voc_mini_base_and_novel_means_split1(voc_mini_records):
    novel = VOC_NOVEL_CLASSES[1]
    stats = _evaluate_with_boxes(voc_mini_records, lambda box, name: _shift(box, name) if name in novel else box,
                                 split=1)
    present = sorted({VOC_CLASSES[label] for rec in voc_mini_records for label in rec.labels})
    present_novel = [c for c in present if c in novel]
    assert present_novel == ["sofa"]  # what voc_mini holds of split 1's novel classes
    assert stats["nAP50"] == 0.0
    assert stats["bAP50"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx((len(present) - 1) / len(present))


def _devkit_transcription(dets, gts, threshold, use_07):
    """The devkit algorithm restated on 1-based boxes: dets [(key, score, box1)], gts {key: (boxes1, diff)}."""
    npos = sum(int((~d).sum()) for _, d in gts.values())
    used = {k: [False] * len(d) for k, (_, d) in gts.items()}
    flags = []
    for key, _, b in sorted(dets, key=lambda d: -d[1]):
        boxes, diff = gts[key]
        best, best_j = -1.0, -1
        for j, g in enumerate(boxes):
            iw = max(min(g[2], b[2]) - max(g[0], b[0]) + 1, 0)
            ih = max(min(g[3], b[3]) - max(g[1], b[1]) + 1, 0)
            union = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
            if iw * ih / union > best:
                best, best_j = iw * ih / union, j
        if best <= threshold:
            flags.append((0, 1))
        elif not diff[best_j]:
            flags.append((0, 1) if used[key][best_j] else (1, 0))
            used[key][best_j] = True
    tp = np.cumsum([f[0] for f in flags])
    fp = np.cumsum([f[1] for f in flags])
    rec, prec = tp / npos, tp / np.maximum(tp + fp, 1e-300)
    if use_07:
        return sum(max([p for r, p in zip(rec, prec) if r >= t], default=0) for t in np.arange(0, 1.1, 0.1)) / 11
    # area under the precision envelope, recall step by recall step
    area, prev_r = 0.0, 0.0
    for i, r in enumerate(rec):
        if r > prev_r:
            area += (r - prev_r) * max(prec[i:])
            prev_r = r
    return area


def test_matches_a_devkit_transcription_on_jittered_voc_mini(voc_mini_records):
    rng = np.random.default_rng(3)
    chair = VOC_CLASSES.index("chair")
    car = VOC_CLASSES.index("car")
    dets, gts = {chair: [], car: []}, {chair: {}, car: {}}
    evaluator = VocEvaluator(voc_mini_records, VOC_CLASSES, iou_thresholds=(0.5, 0.6, 0.75))
    for rec in voc_mini_records:
        for cls in (chair, car):
            sel = rec.labels == cls
            gts[cls][rec.file_id] = (rec.boxes[sel].astype(np.float64) + [1, 1, 0, 0], rec.difficult[sel])
            if sel.any():
                boxes = np.repeat(rec.boxes[sel].astype(np.float64), 3, axis=0)
                size = np.repeat(rec.boxes[sel, 2:] - rec.boxes[sel, :2], 3, axis=0)
                boxes += rng.normal(0, 0.15, boxes.shape) * np.tile(size, 2)
                scores = rng.uniform(0, 1, len(boxes))
                evaluator.update([rec.file_id], scores[None], np.full((1, len(boxes)), cls), boxes[None])
                dets[cls] += [(rec.file_id, s, b + [1, 1, 0, 0]) for s, b in zip(scores, boxes)]
    for use_07 in (True, False):
        evaluator.use_07_metric = use_07
        stats = evaluator.evaluate()
        for cls in (chair, car):
            expected = _devkit_transcription(dets[cls], gts[cls], 0.5, use_07)
            assert 0 < expected < 1
            assert stats["per_class_AP50"][VOC_CLASSES[cls]] == pytest.approx(expected, abs=1e-12)
        # the other classes with positives have no detections (AP 0) and count in the mean
        present = {label for rec in voc_mini_records for label, diff in zip(rec.labels, rec.difficult) if not diff}
        expected_75 = sum(_devkit_transcription(dets[c], gts[c], 0.75, use_07) for c in (chair, car)) / len(present)
        assert stats["AP75"] == pytest.approx(expected_75, abs=1e-12)
