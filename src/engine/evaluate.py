"""Evaluation of a detector over a split: dataset -> inference graph -> COCO or VOC metrics.

Two paths, chosen by the data config:

* DETR-family configs (a COCO split, :func:`evaluate_coco`): follows facebookresearch/detr
  ``engine.evaluate`` (post-process to original-image pixels, COCO bbox evaluation), with the post-process
  compiled into the same graph as the network.
* DeFRCN-family configs (``data.classes`` set, :func:`evaluate_few_shot`): follows er-muyue/DeFRCN
  ``defrcn/evaluation/evaluator.py`` with its ``COCOEvaluator`` / ``PascalVOCDetectionEvaluator``. COCO: the
  12 COCOeval stats over the detector's classes plus ``bAP*`` / ``nAP*`` on its base / novel classes
  (``src.evaluation.few_shot_metrics``); VOC: AP50 with the VOC2007 11-point metric (area under the curve
  when the test set is not VOC2007, as DeFRCN), AP over IoU 0.50:0.95, ``bAP50`` / ``nAP50`` and per-class
  AP50 (``src.evaluation.voc_evaluator``), ground truth from the XML files of ``data.val_split``. With
  ``eval.pcb_enable`` every image's detections are re-scored by PCB (``src.engine.pcb_eval``) before they
  reach the evaluator. Difference: DeFRCN's overall COCO AP averages over every category of the annotation
  file; here it averages over the detector's classes (equal for the 80-class gFSOD detector; for base
  training or FSOD it equals bAP or nAP instead of being diluted by classes the detector cannot predict).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import mindspore as ms
import numpy as np
from mindspore import nn

from src.data.coco import annotation_file
from src.data.dataset import create_coco_dataset, create_dataset
from src.data.few_shot import COCO_BASE_IDS, COCO_NOVEL_IDS, VOC_BASE_CLASSES, VOC_NOVEL_CLASSES
from src.data.sources import (
    coco_split_paths,
    detector_class_ids,
    detector_class_names,
    uses_sources,
    voc_eval_records,
)
from src.data.voc import parse_split_spec, voc_file_id
from src.engine.pcb_eval import build_pcb
from src.evaluation.coco_evaluator import CocoEvaluator
from src.evaluation.few_shot_metrics import FewShotCocoEvaluator
from src.evaluation.voc_evaluator import VocEvaluator
from src.progress import track

EVAL_COLUMNS = ["image", "mask", "image_id", "orig_size"]


class InferenceNet(nn.Cell):
    """Network and post-process as one graph: what eval, infer and export run.

    ``postprocess(*network(image, mask), orig_size)`` is the contract every model of the zoo follows.

    Inputs:
        image: float32 [B, 3, H, W], normalized, zero-padded; mask: bool [B, H, W], True on padding;
        orig_size: int32 or float32 [B, 2], (height, width) of the original images in pixels.

    Outputs:
        scores float32 [B, Q]; labels int32 [B, Q] (category ids); boxes float32 [B, Q, 4], xyxy in
        original-image pixels.
    """

    def __init__(self, network: nn.Cell, postprocess: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.postprocess = postprocess

    def construct(self, image, mask, orig_size):
        outputs = self.network(image, mask)
        return self.postprocess(*outputs, orig_size.astype(ms.float32))


def evaluate_coco(net: InferenceNet, cfg: dict, coco_path: str, split: str, mindrecord_dir: str,
                  output_dir: str | Path | None = None, max_images: int | None = None,
                  logger=None) -> dict:
    """Run ``net`` over a COCO split and return the 12 COCOeval bbox stats by name.

    Writes ``bbox_results.json`` (COCO results format) and ``metrics.json`` into ``output_dir`` when given.

    Args:
        net: the inference graph, weights loaded, set to eval mode here.
        cfg: the config (``data`` and ``eval`` sections are used).
        coco_path, split: the ground truth is ``coco_path/annotations/instances_{split}.json``.
        mindrecord_dir: MindRecord cache (built on first use).
        max_images: evaluate only the first N images (the ground truth is restricted to them too).

    Returns:
        dict stat name -> float (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl).
    """
    net.set_train(False)
    dataset = create_coco_dataset(coco_path, split, mindrecord_dir, is_training=False,
                                  batch_size=cfg["eval"]["batch_size"], data_cfg=cfg["data"],
                                  max_images=max_images)
    evaluator = CocoEvaluator(annotation_file(coco_path, split))
    batches = track(dataset.create_tuple_iterator(columns=EVAL_COLUMNS, num_epochs=1),
                    dataset.get_dataset_size() * cfg["eval"]["batch_size"], f"evaluating {split}",
                    count=lambda batch: batch[0].shape[0], logger=logger)
    for image, mask, image_id, orig_size in batches:
        scores, labels, boxes = net(image, mask, orig_size)
        evaluator.update(image_id.asnumpy(), scores.asnumpy(), labels.asnumpy(), boxes.asnumpy())
    if logger is not None:
        logger.info("evaluated %d images of %s", len(evaluator.image_ids), split)
    stats = evaluator.evaluate()
    if output_dir is not None:
        evaluator.write_results(Path(output_dir) / "bbox_results.json")
        evaluator.write_metrics(Path(output_dir) / "metrics.json")
    return stats


def evaluate_model(net: InferenceNet, cfg: dict, root: str, split: str, mindrecord_dir: str,
                   output_dir: str | Path | None = None, max_images: int | None = None, logger=None) -> dict:
    """Evaluate ``net`` on ``split`` with the path of ``cfg``'s model family (see the module docstring).

    Returns:
        The stats dict of :func:`evaluate_coco` or :func:`evaluate_few_shot`.
    """
    if not uses_sources(cfg["data"]):
        return evaluate_coco(net, cfg, root, split, mindrecord_dir, output_dir, max_images, logger)
    cfg = {**cfg, "data": {**cfg["data"], "val_split": split}}
    return evaluate_few_shot(net, cfg, root, mindrecord_dir, output_dir, max_images, logger)


def _predict(net: InferenceNet, cfg: dict, root: str, mindrecord_dir: str, max_images: int | None):
    """Yield ``(image_ids int64 [B], scores [B, D], labels [B, D] dataset ids, boxes [B, D, 4])`` per batch."""
    net.set_train(False)
    dataset = create_dataset(root, cfg["data"], "val", mindrecord_dir, batch_size=cfg["eval"]["batch_size"],
                             max_images=max_images)
    batches = track(dataset.create_tuple_iterator(columns=EVAL_COLUMNS, num_epochs=1),
                    dataset.get_dataset_size() * cfg["eval"]["batch_size"], f"evaluating {cfg['data']['val_split']}",
                    count=lambda batch: batch[0].shape[0])
    for image, mask, image_id, orig_size in batches:
        scores, labels, boxes = net(image, mask, orig_size)
        yield image_id.asnumpy(), scores.asnumpy(), labels.asnumpy(), boxes.asnumpy()


def _calibrate(pcb, image_path, image_ids, scores, labels, boxes) -> np.ndarray:
    """Scores of a batch after PCB (unchanged without PCB); padding rows (image id < 0) are skipped."""
    if pcb is None:
        return scores
    scores = np.array(scores, np.float32)
    for row, image_id in enumerate(np.asarray(image_ids).reshape(-1).tolist()):
        if image_id >= 0:
            scores[row] = pcb(image_path(int(image_id)), scores[row], labels[row], boxes[row])
    return scores


def evaluate_few_shot(net: InferenceNet, cfg: dict, root: str, mindrecord_dir: str,
                      output_dir: str | Path | None = None, max_images: int | None = None, logger=None) -> dict:
    """Run a DeFRCN-family detector over ``data.val_split`` and score it (optionally with PCB).

    PCB prototypes are cached in ``mindrecord_dir/pcb_prototypes``.

    Args:
        net: the inference graph (weights loaded); set to eval mode here, so classifier dropout is off.
        cfg: the config (``data``, ``eval``).
        root: dataset root (COCO folder or VOCdevkit).
        mindrecord_dir: MindRecord cache of the evaluation (and support) sets.
        output_dir, logger: see :func:`score_detections`.
        max_images: evaluate only the first N images (the ground truth is restricted to them too).

    Returns:
        See :func:`score_detections`.
    """
    pcb = build_pcb(cfg, root, Path(mindrecord_dir) / "pcb_prototypes")
    return score_detections(cfg, root, _predict(net, cfg, root, mindrecord_dir, max_images), output_dir, pcb, logger)


def score_detections(cfg: dict, root: str, batches: Iterable[tuple], output_dir: str | Path | None = None,
                     pcb=None, logger=None) -> dict:
    """Score post-processed detections of ``data.val_split`` with the COCO or VOC metrics of ``cfg``.

    Args:
        cfg: the config (``data`` is read).
        root: dataset root.
        batches: ``(image_ids int [B] (-1: padding row), scores float [B, D], labels int [B, D] dataset category
            ids (-1: empty slot), boxes float [B, D, 4] xyxy original pixels)`` per batch. Only the images that
            appear are scored.
        output_dir: gets ``metrics.json`` (``{"bbox": stats, "num_images", "num_detections", "dataset",
            "classes", "split", "pcb", ...}``) and, for COCO, ``bbox_results.json``.
        pcb: a :class:`src.engine.pcb_eval.PCBCalibrator` re-scoring each image first, or None.
        logger: where the summary lines go (default: this module's logger).

    Returns:
        COCO: the 12 COCOeval stats over the detector's classes plus ``bAP``.. / ``nAP``.. where the detector
        has base / novel classes. VOC: ``AP``, ``AP50``, ``AP75``, the same with ``b`` / ``n``, and
        ``per_class_AP50`` (NaN for a class without ground truth). Fractions in [0, 1].

    Raises:
        KeyError: an image id that is not in the evaluated split.
    """
    log = logger or logging.getLogger(__name__)
    data_cfg = cfg["data"]
    extra = {"dataset": data_cfg["dataset"], "classes": data_cfg["classes"], "split": data_cfg["val_split"],
             "pcb": pcb is not None}
    if data_cfg["dataset"] == "coco":
        stats, num_images = _score_coco(data_cfg, root, batches, output_dir, pcb, extra)
    else:
        stats, num_images = _score_voc(data_cfg, root, batches, output_dir, pcb, extra)
    log.info("evaluated %d images of %s%s", num_images, data_cfg["val_split"], " with PCB" if pcb else "")
    for prefix, title in (("", "overall"), ("b", "base"), ("n", "novel")):
        if f"{prefix}AP50" in stats:
            log.info("%-7s %sAP %.4f %sAP50 %.4f %sAP75 %.4f", title, prefix, stats[f"{prefix}AP"], prefix,
                     stats[f"{prefix}AP50"], prefix, stats[f"{prefix}AP75"])
    if "per_class_AP50" in stats:
        log.info("per-class AP50: %s", ", ".join(f"{k} {v:.4f}" for k, v in stats["per_class_AP50"].items()))
    return stats


def _score_coco(data_cfg, root, batches, output_dir, pcb, extra):
    class_ids = detector_class_ids(data_cfg)
    ann, images_folder = coco_split_paths(root, data_cfg["val_split"])
    base = [c for c in class_ids if c in COCO_BASE_IDS]
    novel = [c for c in class_ids if c in COCO_NOVEL_IDS]
    evaluator = FewShotCocoEvaluator(ann, base_ids=base or None, novel_ids=novel or None, all_ids=class_ids)
    images = evaluator.coco_gt.imgs

    def image_path(image_id):
        return images_folder / images[image_id]["file_name"]

    for image_ids, scores, labels, boxes in batches:
        evaluator.update(image_ids, _calibrate(pcb, image_path, image_ids, scores, labels, boxes), labels, boxes)
    stats = evaluator.evaluate()
    if output_dir is not None:
        evaluator.write_results(Path(output_dir) / "bbox_results.json")
        evaluator.write_metrics(Path(output_dir) / "metrics.json", extra)
    return stats, len(set(evaluator.image_ids))


def _score_voc(data_cfg, root, batches, output_dir, pcb, extra):
    names = detector_class_names(data_cfg)
    index = {int(c): k for k, c in enumerate(detector_class_ids(data_cfg))}
    records = {r.file_id: r for r in voc_eval_records(root, data_cfg)}

    def image_path(image_id):
        return records[voc_file_id(image_id)].file_name

    seen, kept = {}, []
    for image_ids, scores, labels, boxes in batches:
        file_ids = [voc_file_id(i) if i >= 0 else None for i in np.asarray(image_ids).reshape(-1).tolist()]
        unknown = [f for f in file_ids if f and f not in records]
        if unknown:
            raise KeyError(f"images {unknown} are not in VOC split {data_cfg['val_split']}")
        seen.update((f, None) for f in file_ids if f)
        indices = np.vectorize(lambda c: index.get(int(c), -1), otypes=[np.int64])(np.asarray(labels))
        kept.append((file_ids, _calibrate(pcb, image_path, image_ids, scores, labels, boxes), indices, boxes))
    # The evaluator is built once the evaluated images are known, so a partial run is scored on its own images.
    split = int(data_cfg.get("voc_split", 1))
    use_07 = all(year == 2007 for year, _ in parse_split_spec(data_cfg["val_split"]))
    base = [n for n in names if n in VOC_BASE_CLASSES[split]]
    novel = [n for n in names if n in VOC_NOVEL_CLASSES[split]]
    evaluator = VocEvaluator([records[f] for f in seen], names, use_07, base or None, novel or None)
    for batch in kept:
        evaluator.update(*batch)
    stats = evaluator.evaluate()
    if output_dir is not None:
        evaluator.write_metrics(Path(output_dir) / "metrics.json", extra)
    return stats, len(seen)
