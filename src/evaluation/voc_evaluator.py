"""Pascal VOC detection AP (VOC07 11-point or area under the PR curve), with base / novel class means.

Follows the Python port of the VOC devkit that detectron2's ``PascalVOCDetectionEvaluator`` and DeFRCN's
``defrcn/evaluation/pascal_voc_evaluation.py`` use (``voc_eval`` / ``voc_ap``, from py-faster-rcnn):

* per class, detections are ranked by descending score (a stable sort here, so ties keep insertion order;
  the reference uses NumPy's default unstable sort);
* each detection goes to the ground-truth box of the same image and class with the largest overlap; it is a
  true positive when that overlap is strictly above the IoU threshold and the box is not taken yet, a false
  positive when the box is already taken or the overlap is too small, and neither when the box is
  ``difficult``; difficult boxes do not count in the number of positives either;
* recall = cumulative TP / positives, precision = cumulative TP / max(cumulative TP + FP, eps);
* AP is the VOC2007 11-point interpolation (mean over recall levels 0, 0.1, ..., 1 of the best precision at
  a recall at least that level; the default, as DeFRCN reports VOC) or, with ``use_07_metric=False``, the
  area under the monotone precision envelope (VOC2010+).

Pixel convention: the devkit measures boxes in 1-based inclusive pixel indices and adds 1 to every width and
height. Ground truth here comes from ``src.data.voc`` as 0-based xyxy (``xmin - 1, ymin - 1, xmax, ymax``) and
detections are 0-based xyxy too; like detectron2, which writes each detection with ``xmin + 1, ymin + 1``
before calling ``voc_eval`` and reads the raw XML boxes, both are moved back to the devkit frame by adding 1
to ``x0`` and ``y0`` and the overlap then uses the devkit's +1 widths (:func:`devkit_iou`). The two shifts
cancel, so the result is the plain continuous IoU of the 0-based boxes. Unlike detectron2, detections are not
rounded to the 3-decimal score / 1-decimal box text of its intermediate files.

A class without any non-difficult ground truth has no defined AP: it is reported as NaN and left out of
every mean (the reference divides by zero positives and ends with 0). All APs are fractions in [0, 1].
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from src.data.voc import VOC_CLASSES, VocRecord
from src.fileio import atomic_write_text

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds 0.50, 0.55, ..., 0.95 over which ``AP`` is averaged (as DeFRCN's evaluator does)."""


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision from a precision/recall curve.

    Args:
        recall: float [D], non-decreasing recall after each ranked detection.
        precision: float [D], precision after each ranked detection.
        use_07_metric: True for the VOC2007 11-point interpolation, False for the area under the precision
            envelope (precision made non-increasing from the right, summed over recall steps).

    Returns:
        AP in [0, 1]; 0 for an empty curve.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        total = 0.0
        # The levels are the reference's floats (0.30000000000000004 ...), so a recall of exactly 3/10 does
        # not reach level 0.3 there either.
        for level in np.linspace(0.0, 1.0, 11):
            reached = recall >= level
            total += float(precision[reached].max()) if reached.any() else 0.0
        return total / 11.0
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.nonzero(rec[1:] != rec[:-1])[0]
    return float(np.sum((rec[steps + 1] - rec[steps]) * envelope[steps + 1]))


def devkit_iou(box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """Overlap of one box with several, in the VOC devkit's inclusive-pixel convention.

    Args:
        box: float [4] ``(x0, y0, x1, y1)`` 1-based inclusive pixel indices (the devkit frame).
        gt_boxes: float [G, 4] in the same frame.

    Returns:
        float64 [G]: intersection / union where every side length is ``x1 - x0 + 1`` (an empty intersection
        counts 0).
    """
    box = np.asarray(box, np.float64)
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    iw = np.maximum(np.minimum(gt[:, 2], box[2]) - np.maximum(gt[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], box[3]) - np.maximum(gt[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    gt_area = (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
    return inter / (area + gt_area - inter)


def _to_devkit_frame(boxes: np.ndarray) -> np.ndarray:
    """0-based xyxy -> the devkit's 1-based inclusive indices (add 1 to x0 and y0 only)."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def voc_eval_class(detections: Sequence[Tuple[Hashable, float, Sequence[float]]],
                   ground_truth: Dict[Hashable, Tuple[np.ndarray, np.ndarray]], iou_threshold: float = 0.5,
                   use_07_metric: bool = True) -> Tuple[np.ndarray, np.ndarray, float]:
    """Precision, recall and AP of one class (the devkit's ``voc_eval`` on in-memory data).

    Args:
        detections: ``(image key, score, box)`` triples; box float [4] 0-based xyxy pixels.
        ground_truth: image key -> (boxes float [G, 4] 0-based xyxy, difficult bool [G]) of this class, for
            every evaluated image (images without an entry have no ground truth of this class).
        iou_threshold: a match needs an overlap strictly above it.
        use_07_metric: see :func:`voc_ap`.

    Returns:
        (recall float64 [D], precision float64 [D], AP), detections in ranked order. AP is NaN when there is
        no non-difficult ground truth (recall is then NaN too).

    Raises:
        KeyError: a detection on an image that has no ground-truth entry at all (not one of the evaluated
            images), which the devkit would also reject.
    """
    return voc_eval_class_thresholds(detections, ground_truth, (iou_threshold,), use_07_metric)[0]


def voc_eval_class_thresholds(detections: Sequence[Tuple[Hashable, float, Sequence[float]]],
                              ground_truth: Dict[Hashable, Tuple[np.ndarray, np.ndarray]],
                              iou_thresholds: Sequence[float], use_07_metric: bool = True
                              ) -> List[Tuple[np.ndarray, np.ndarray, float]]:
    """:func:`voc_eval_class` at several IoU thresholds, one ``(recall, precision, AP)`` per threshold.

    The ranking and each detection's best-overlapping box do not depend on the threshold, so the overlaps are
    computed once and only the greedy assignment is repeated.

    Raises:
        KeyError: as :func:`voc_eval_class`.
    """
    gt_boxes = {key: _to_devkit_frame(boxes) for key, (boxes, _) in ground_truth.items()}
    gt_difficult = {key: np.asarray(diff, bool).reshape(-1) for key, (_, diff) in ground_truth.items()}
    num_pos = int(sum(int((~d).sum()) for d in gt_difficult.values()))

    scores = np.asarray([float(score) for _, score, _ in detections], np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked_keys, best_overlap, best_index = [], np.full(len(order), -np.inf), np.zeros(len(order), np.int64)
    for rank, index in enumerate(order):
        key, _, box = detections[index]
        if key not in gt_boxes:
            raise KeyError(f"detection on image {key!r}, which is not among the evaluated images")
        ranked_keys.append(key)
        if len(gt_boxes[key]):
            overlaps = devkit_iou(_to_devkit_frame(box)[0], gt_boxes[key])
            best_index[rank] = int(np.argmax(overlaps))
            best_overlap[rank] = overlaps[best_index[rank]]

    curves = []
    for threshold in iou_thresholds:
        taken = {key: np.zeros(len(d), bool) for key, d in gt_difficult.items()}
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for rank, key in enumerate(ranked_keys):
            best = best_index[rank]
            if best_overlap[rank] <= threshold:
                fp[rank] = 1.0
            elif gt_difficult[key][best]:
                continue
            elif taken[key][best]:
                fp[rank] = 1.0
            else:
                tp[rank] = 1.0
                taken[key][best] = True
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if num_pos == 0:
            curves.append((np.full_like(tp, np.nan), precision, math.nan))
        else:
            recall = tp / num_pos
            curves.append((recall, precision, voc_ap(recall, precision, use_07_metric)))
    return curves


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


class VocEvaluator:
    """Accumulate detections per batch and score them with VOC AP, overall and on base / novel classes.

    Args:
        records: the evaluated images with their ground truth (``src.data.voc`` records read with
            ``class_names``, difficult objects kept); images are keyed by ``file_id``.
        class_names: the detector's class order; detection labels index it.
        use_07_metric: VOC2007 11-point AP (default, as DeFRCN reports VOC2007 test) or area under the curve.
        base_classes, novel_classes: class names for ``bAP*`` / ``nAP*`` (e.g. ``VOC_BASE_CLASSES[1]`` and
            ``VOC_NOVEL_CLASSES[1]`` from ``src.data.few_shot``); None leaves that subset out.
        iou_thresholds: thresholds over which ``AP`` averages; must contain 0.5 and 0.75.

    Attributes:
        detections: class index -> list of ``(file_id, score, box 0-based xyxy)``.
        stats: dict after :meth:`evaluate`, else None.

    Raises:
        ValueError: duplicate file ids, a base/novel name not in ``class_names``, or thresholds without 0.5
            and 0.75.
    """

    def __init__(self, records: Sequence[VocRecord], class_names: Sequence[str] = VOC_CLASSES,
                 use_07_metric: bool = True, base_classes: Optional[Sequence[str]] = None,
                 novel_classes: Optional[Sequence[str]] = None, iou_thresholds: Sequence[float] = IOU_THRESHOLDS):
        self.class_names = tuple(class_names)
        self.use_07_metric = bool(use_07_metric)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        if not {0.5, 0.75} <= set(self.iou_thresholds):
            raise ValueError(f"iou_thresholds must contain 0.5 and 0.75, got {self.iou_thresholds}")
        self.subsets = {}
        for prefix, names in (("b", base_classes), ("n", novel_classes)):
            if names is None:
                continue
            unknown = [n for n in names if n not in self.class_names]
            if unknown:
                raise ValueError(f"{prefix}AP classes {unknown} are not among the evaluated classes")
            self.subsets[prefix] = tuple(names)
        self.records = {}
        for record in records:
            if record.file_id in self.records:
                raise ValueError(f"image {record.file_id!r} is listed twice in the VOC records")
            self.records[record.file_id] = record
        self.detections: Dict[int, List[Tuple[str, float, np.ndarray]]] = defaultdict(list)
        self.stats: Optional[Dict[str, Any]] = None

    def update(self, file_ids: Sequence[Optional[str]], scores, labels, boxes_xyxy) -> None:
        """Add one batch of post-processed detections.

        Args:
            file_ids: [B] VOC file ids; None or ``""`` marks a batch padding row (skipped).
            scores: float [B, Q].
            labels: int [B, Q] indices into ``class_names``; values outside ``[0, len(class_names))`` (the
                no-object class, padding) are dropped.
            boxes_xyxy: float [B, Q, 4] 0-based ``(x0, y0, x1, y1)`` in original-image pixels.

        Raises:
            ValueError: inconsistent shapes.
            KeyError: a file id that is not among the records.
        """
        scores, labels, boxes = np.asarray(scores), np.asarray(labels), np.asarray(boxes_xyxy)
        if (scores.ndim != 2 or len(file_ids) != scores.shape[0] or labels.shape != scores.shape
                or boxes.shape != (*scores.shape, 4)):
            raise ValueError("VocEvaluator.update expects file_ids [B], scores [B, Q], labels [B, Q], boxes "
                             f"[B, Q, 4]; got {len(file_ids)}, {scores.shape}, {labels.shape}, {boxes.shape}.")
        for row, file_id in enumerate(file_ids):
            if not file_id:
                continue
            if file_id not in self.records:
                raise KeyError(f"image {file_id!r} is not among the VOC records being evaluated")
            keep = (labels[row] >= 0) & (labels[row] < len(self.class_names)) & np.isfinite(scores[row])
            for score, label, box in zip(scores[row][keep], labels[row][keep], boxes[row][keep]):
                self.detections[int(label)].append((file_id, float(score), np.asarray(box, np.float64)))

    def _ground_truth(self, class_index: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        return {file_id: (rec.boxes[rec.labels == class_index], rec.difficult[rec.labels == class_index])
                for file_id, rec in self.records.items()}

    def evaluate(self) -> Dict[str, Any]:
        """Score the accumulated detections on every record.

        Returns:
            dict with ``AP`` (mean over ``iou_thresholds`` of the class mean), ``AP50``, ``AP75``, the same
            with prefixes ``b`` / ``n`` for the configured base / novel classes, and ``per_class_AP50``
            (class name -> AP50, NaN for a class without non-difficult ground truth). Means skip NaN classes;
            a mean over no class at all is NaN.
        """
        per_class: Dict[float, Dict[str, float]] = {t: {} for t in self.iou_thresholds}
        no_positives = []
        for index, name in enumerate(self.class_names):
            curves = voc_eval_class_thresholds(self.detections.get(index, []), self._ground_truth(index),
                                               self.iou_thresholds, self.use_07_metric)
            for threshold, (_, _, ap) in zip(self.iou_thresholds, curves):
                per_class[threshold][name] = ap
            if math.isnan(curves[0][2]):
                no_positives.append(name)
        if no_positives:
            logger.warning("VOC evaluation: no non-difficult ground truth for %s; their AP is NaN and left out "
                           "of the means.", ", ".join(no_positives))
        stats: Dict[str, Any] = {}
        for prefix, names in (("", self.class_names), *self.subsets.items()):
            means = {t: _nanmean([per_class[t][n] for n in names]) for t in self.iou_thresholds}
            stats[f"{prefix}AP"] = _nanmean(list(means.values()))
            stats[f"{prefix}AP50"] = means[0.5]
            stats[f"{prefix}AP75"] = means[0.75]
        stats["per_class_AP50"] = dict(per_class[0.5])
        self.stats = stats
        return stats

    def write_metrics(self, path: str | os.PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``{"bbox": stats, "num_images", "num_detections", "metric", **extra}`` as JSON (atomically).

        NaN APs are written as null.

        Raises:
            RuntimeError: if :meth:`evaluate` has not run.
        """
        if self.stats is None:
            raise RuntimeError("VocEvaluator.write_metrics called before evaluate().")

        def clean(value):
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return None if isinstance(value, float) and math.isnan(value) else value

        payload = {"bbox": clean(self.stats), "num_images": len(self.records),
                   "num_detections": sum(len(d) for d in self.detections.values()),
                   "metric": "voc07_11point" if self.use_07_metric else "area", **(extra or {})}
        return atomic_write_text(path, json.dumps(payload, indent=2))
