"""COCO bbox evaluation over pycocotools, fed with post-processed DETR detections batch by batch.

Follows facebookresearch/detr datasets/coco_eval.py in spirit: detections are converted to the COCO result
format (``bbox`` as ``[x, y, w, h]`` in original-image pixels), evaluation is restricted to the images that
were actually run (so a partial run is scored on its own images), and the standard 12 COCOeval stats are
printed and returned. Differences: one process accumulates everything (distributed evaluation gathers
before calling this), the no-object class and padding rows are dropped here, an evaluation with zero
detections returns pycocotools' own zeros (or -1 stats when no image was run) with a warning instead of
crashing in ``COCO.loadRes``, and results/metrics files are written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.fileio import atomic_write_text

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_coco_gt(annotations: str | os.PathLike | COCO) -> COCO:
    """``annotations`` as a ``COCO``: loaded from a COCO instances JSON path, or returned when already one.

    Raises:
        FileNotFoundError: the path is not a file.
    """
    if isinstance(annotations, COCO):
        return annotations
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file '{path}' does not exist.")
    return COCO(str(path))


def _empty_results(coco_gt: COCO) -> COCO:
    """A result COCO with no detections (``COCO.loadRes([])`` raises IndexError instead)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def run_cocoeval(coco_gt: COCO, results: Sequence[dict], image_ids: Iterable[int] | None = None,
                 cat_ids: Iterable[int] | None = None) -> dict:
    """COCOeval bbox on ``results`` (COCO result dicts), printing the standard 12-line table.

    Args:
        coco_gt: ground truth.
        results: list of ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}``.
        image_ids: images to score; None scores every ground-truth image (the cocoapi default).
        cat_ids: categories to average over (``COCOeval.params.catIds``); None takes every ground-truth
            category (the cocoapi default). Detections of other categories are not paired with anything, so
            they do not change the result; ids without ground truth in the scored images are left out of the
            averages (pycocotools marks them -1).

    Returns:
        dict stat name (``STAT_NAMES``) -> float. All -1.0 when ``image_ids`` is empty; pycocotools' zeros
        (or -1 where a size range has no ground truth) when ``results`` is empty.

    Raises:
        ValueError: an empty ``cat_ids`` (pycocotools would silently score every category instead).
    """
    if cat_ids is not None:
        cat_ids = sorted(set(int(c) for c in cat_ids))
        if not cat_ids:
            raise ValueError("run_cocoeval: cat_ids is empty; pass None to score every category")
    image_ids = sorted(set(int(i) for i in image_ids)) if image_ids is not None else sorted(coco_gt.getImgIds())
    if not image_ids:
        logger.warning("COCO evaluation on zero images: every stat is -1.")
        return {name: -1.0 for name in STAT_NAMES}
    if results:
        # loadRes adds 'area', 'id' (and a segmentation) to each dict: give it copies.
        coco_dt = coco_gt.loadRes([dict(result) for result in results])
    else:
        logger.warning("COCO evaluation with zero detections on %d image(s): AP/AR are 0.", len(image_ids))
        coco_dt = _empty_results(coco_gt)
    coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
    coco_eval.params.imgIds = image_ids
    if cat_ids is not None:
        coco_eval.params.catIds = cat_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}


class CocoEvaluator:
    """Accumulate detections per batch and score them with pycocotools.

    Args:
        annotations: path of a COCO instances JSON, or a loaded ``pycocotools.coco.COCO``.
        num_classes: DETR's ``num_classes``; label ``num_classes`` (and above) is the no-object class and is
            dropped, as are negative labels (empty detection slots).

    Attributes:
        image_ids: ids of the images passed to :meth:`update` (padding rows excluded), in order.
        results: accumulated COCO result dicts.
        stats: dict of the 12 stats after :meth:`evaluate`, else None.
    """

    def __init__(self, annotations: str | os.PathLike | COCO, num_classes: int = 91):
        self.coco_gt = load_coco_gt(annotations)
        self.num_classes = int(num_classes)
        self.image_ids: list[int] = []
        self.results: list[dict[str, Any]] = []
        self.stats: dict[str, float] | None = None
        self._known_ids = set(self.coco_gt.getImgIds())

    def update(self, image_ids, scores, labels, boxes_xyxy) -> None:
        """Add one batch of post-processed detections.

        Args:
            image_ids: int [B]; rows with a negative id are batch padding and are skipped.
            scores: float [B, Q] confidence.
            labels: int [B, Q] COCO category ids; ``>= num_classes`` means no-object and a negative label an
                empty slot (DeFRCN's post-process marks them -1); both are skipped.
            boxes_xyxy: float [B, Q, 4] ``(x0, y0, x1, y1)`` in original-image pixels.

        Raises:
            ValueError: inconsistent shapes (all four shapes are named).
            KeyError: an image id that the annotation file does not contain.
        """
        image_ids = np.asarray(image_ids).reshape(-1)
        scores, labels, boxes = np.asarray(scores), np.asarray(labels), np.asarray(boxes_xyxy)
        batch = image_ids.shape[0]
        if (
            scores.ndim != 2
            or scores.shape[0] != batch
            or labels.shape != scores.shape
            or boxes.shape != (*scores.shape, 4)
        ):
            raise ValueError(
                "CocoEvaluator.update expects image_ids [B], scores [B, Q], labels [B, Q], boxes [B, Q, 4]; got "
                f"{image_ids.shape}, {scores.shape}, {labels.shape}, {boxes.shape}."
            )
        for row in range(batch):
            image_id = int(image_ids[row])
            if image_id < 0:
                continue
            if image_id not in self._known_ids:
                raise KeyError(f"image id {image_id} is not in the COCO annotation file being evaluated against.")
            self.image_ids.append(image_id)
            keep = (labels[row] >= 0) & (labels[row] < self.num_classes) & np.isfinite(scores[row])
            for score, label, (x0, y0, x1, y1) in zip(
                scores[row][keep].tolist(), labels[row][keep].tolist(), boxes[row][keep].tolist()
            ):
                self.results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": score,
                    }
                )

    def write_results(self, path: str | os.PathLike) -> Path:
        """Write the accumulated detections as a COCO results JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.results))

    def evaluate(self) -> dict[str, float]:
        """Score the accumulated detections on the images passed to :meth:`update`.

        Returns:
            dict with keys ``STAT_NAMES`` (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl).
        """
        if len(set(self.image_ids)) != len(self.image_ids):
            logger.warning("CocoEvaluator: some images were passed to update() more than once.")
        self.stats = run_cocoeval(self.coco_gt, self.results, self.image_ids)
        return self.stats

    def write_metrics(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``{"bbox": stats, "num_images", "num_detections", **extra}`` as JSON (atomically).

        Raises:
            RuntimeError: if :meth:`evaluate` has not run.
        """
        if self.stats is None:
            raise RuntimeError("CocoEvaluator.write_metrics called before evaluate().")
        payload = {
            "bbox": self.stats,
            "num_images": len(set(self.image_ids)),
            "num_detections": len(self.results),
            **(extra or {}),
        }
        return atomic_write_text(path, json.dumps(payload, indent=2))


def evaluate_results_file(
    ann_file: str | os.PathLike | COCO, results_file: str | os.PathLike, image_ids: Iterable[int] | None = None
) -> dict[str, float]:
    """Score a COCO results JSON against an annotation file (every GT image unless ``image_ids`` is given).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: a results file that is not a JSON list.
    """
    results_path = Path(results_file)
    if not results_path.is_file():
        raise FileNotFoundError(f"COCO results file '{results_path}' does not exist.")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if not isinstance(results, list):
        raise ValueError(f"'{results_path}' must hold a JSON list of detections, got {type(results).__name__}.")
    return run_cocoeval(load_coco_gt(ann_file), results, image_ids)
