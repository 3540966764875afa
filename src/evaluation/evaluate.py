"""Evaluation of a detector over a split: one predict-and-score loop for every model family and dataset.

:func:`evaluate_model` reads ``data.val_split`` through the one data road (``src.data.dataset.create_dataset``),
runs the inference graph (network + post-process, detections in original-image pixels with dataset category
ids; with ``eval.unpadded``, the default, each image at its own size, ``src.evaluation.unpadded``), and
:func:`score_detections` scores them with the metrics of the dataset format:

* COCO-format datasets: the 12 COCOeval bbox stats over the catalog's classes (``src.data.catalog``), following
  facebookresearch/detr ``engine.evaluate``; for the DeFRCN few-shot class sets also ``bAP*`` / ``nAP*`` on the
  COCO base / novel classes (``src.evaluation.few_shot_metrics``, er-muyue/DeFRCN ``COCOEvaluator``).
* VOC-format datasets: AP50 with the VOC2007 11-point metric (area under the curve when the test set is not
  VOC2007, as DeFRCN ``PascalVOCDetectionEvaluator``), AP over IoU 0.50:0.95 and AP75, per-class AP50, and for the
  DeFRCN VOC splits ``bAP50`` / ``nAP50`` (``src.evaluation.voc_evaluator``); ground truth from the XML files.

A model that supplies a score calibrator (``src.models.build_score_calibrator``; DeFRCN's PCB with
``eval.pcb_enable``) re-scores every image's detections before they reach the evaluator.

Difference: DeFRCN's overall COCO AP averages over every category of the annotation
file; here it averages over the detector's classes (equal for the 80-class gFSOD detector; for base training or
FSOD it equals bAP or nAP instead of being diluted by classes the detector cannot predict).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import mindspore as ms
import numpy as np

from src.config import ConfigError
from src.data.catalog import build_catalog, coco_catalog, is_few_shot
from src.data.dataset import create_dataset
from src.data.few_shot import COCO_BASE_IDS, COCO_NOVEL_IDS, VOC_BASE_CLASSES, VOC_NOVEL_CLASSES
from src.data.sources import class_set, coco_split_paths, voc_eval_records
from src.data.voc import parse_split_spec, voc_file_id
from src.evaluation.few_shot_metrics import FewShotCocoEvaluator
from src.evaluation.unpadded import unpadded_inference
from src.evaluation.voc_evaluator import VocEvaluator
from src.models import build_score_calibrator
from src.models.contract import InferenceNet, ScoreCalibrator
from src.progress import track

EVAL_COLUMNS = ["image", "mask", "image_id", "orig_size"]


def _predict(net: InferenceNet, cfg: dict, root: str, mindrecord_dir: str, max_images: int | None):
    """Yield ``(image_ids int64 [B], scores [B, D], labels [B, D] dataset ids, boxes [B, D, 4])`` per batch.

    With ``eval.unpadded`` every image runs at its own size (:func:`src.evaluation.unpadded.unpadded_inference`);
    otherwise batches are padded to the ``data.eval_pad_buckets``.
    """
    if cfg["eval"]["unpadded"] and cfg["eval"]["batch_size"] != 1:
        raise ConfigError(f"eval.unpadded runs one image at a time; eval.batch_size is {cfg['eval']['batch_size']} "
                          f"(set it to 1, or eval.unpadded to false for buckets)")
    net.set_train(False)
    data_cfg = cfg["data"]
    if cfg["eval"]["unpadded"]:
        data_cfg = {**data_cfg, "eval_pad_buckets": None}
        net = unpadded_inference(net, cfg["model"]["name"], eager=ms.get_context("mode") == ms.PYNATIVE_MODE)
    dataset = create_dataset(root, data_cfg, "val", mindrecord_dir, batch_size=cfg["eval"]["batch_size"],
                             max_images=max_images)
    batches = track(dataset.create_tuple_iterator(columns=EVAL_COLUMNS, num_epochs=1),
                    dataset.get_dataset_size() * cfg["eval"]["batch_size"], f"evaluating {cfg['data']['val_split']}",
                    count=lambda batch: batch[0].shape[0])
    for image, mask, image_id, orig_size in batches:
        scores, labels, boxes = net(image, mask, orig_size)
        yield image_id.asnumpy(), scores.asnumpy(), labels.asnumpy(), boxes.asnumpy()


def _calibrate(calibrator, image_path, image_ids, scores, labels, boxes) -> np.ndarray:
    """Scores of a batch after the calibrator (unchanged without one); padding rows (image id < 0) are skipped."""
    if calibrator is None:
        return scores
    scores = np.array(scores, np.float32)
    for row, image_id in enumerate(np.asarray(image_ids).reshape(-1).tolist()):
        if image_id >= 0:
            scores[row] = calibrator(image_path(int(image_id)), scores[row], labels[row], boxes[row])
    return scores


def evaluate_model(net: InferenceNet, cfg: dict, root: str, split: str | None, mindrecord_dir: str,
                   output_dir: str | Path | None = None, max_images: int | None = None, logger=None) -> dict:
    """Run ``net`` over ``split`` of the dataset at ``root`` and score it (see the module docstring).

    The model's score calibrator, if it supplies one, may cache under ``mindrecord_dir`` (DeFRCN's PCB prototypes:
    ``mindrecord_dir/pcb_prototypes``).

    Args:
        net: the inference graph (weights loaded); set to eval mode here (so dropout is off).
        cfg: the config (``data``, ``eval``).
        root: dataset root (a COCO-format folder or a VOCdevkit).
        split: the split to evaluate (None: ``data.val_split``).
        mindrecord_dir: MindRecord cache of the evaluation (and support) sets, built on first use.
        output_dir, logger: see :func:`score_detections`.
        max_images: evaluate only the first N images (the ground truth is restricted to them too).

    Returns:
        See :func:`score_detections`.

    Raises:
        src.errors.InputError subclasses: invalid dataset files or class lists (named in the message);
        ``src.config.ConfigError`` for ``eval.unpadded`` with ``eval.batch_size`` other than 1.
    """
    if split is not None:
        cfg = {**cfg, "data": {**cfg["data"], "val_split": split}}
    calibrator = build_score_calibrator(cfg, root, mindrecord_dir)
    batches = _predict(net, cfg, root, mindrecord_dir, max_images)
    return score_detections(cfg, root, batches, output_dir, calibrator, logger)


def score_detections(cfg: dict, root: str, batches: Iterable[tuple], output_dir: str | Path | None = None,
                     calibrator: ScoreCalibrator | None = None, logger=None) -> dict:
    """Score post-processed detections of ``data.val_split`` with the COCO or VOC metrics of ``cfg``.

    Args:
        cfg: the config (``data`` is read).
        root: dataset root.
        batches: ``(image_ids int [B] (-1: padding row), scores float [B, D], labels int [B, D] dataset category
            ids (-1: empty slot), boxes float [B, D, 4] xyxy original pixels)`` per batch. Only the images that
            appear are scored.
        output_dir: gets ``metrics.json`` (``{"bbox": stats, "num_images", "num_detections", "dataset",
            "classes", "split", ...}``, with ``{calibrator.name.lower(): true}`` when calibrated) and, for COCO,
            ``bbox_results.json``.
        calibrator: a :class:`src.models.contract.ScoreCalibrator` re-scoring each image first, or None.
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
    catalog = build_catalog(data_cfg, root, "val")
    extra = {"dataset": data_cfg["dataset"], "classes": class_set(data_cfg),
             "categories": [{"id": i, "name": n} for i, n in zip(catalog.ids, catalog.names)],
             "split": data_cfg["val_split"]}
    if calibrator is not None:
        extra[calibrator.name.lower()] = True
    if data_cfg["dataset"] == "coco":
        stats, num_images = _score_coco(data_cfg, catalog, root, batches, output_dir, calibrator, extra)
    else:
        stats, num_images = _score_voc(data_cfg, catalog, root, batches, output_dir, calibrator, extra)
    log.info("evaluated %d images of %s%s", num_images, data_cfg["val_split"],
             f" with {calibrator.name}" if calibrator is not None else "")
    for prefix, title in (("", "overall"), ("b", "base"), ("n", "novel")):
        if f"{prefix}AP50" in stats:
            log.info("%-7s %sAP %.4f %sAP50 %.4f %sAP75 %.4f", title, prefix, stats[f"{prefix}AP"], prefix,
                     stats[f"{prefix}AP50"], prefix, stats[f"{prefix}AP75"])
    if "per_class_AP50" in stats:
        log.info("per-class AP50: %s", ", ".join(f"{k} {v:.4f}" for k, v in stats["per_class_AP50"].items()))
    return stats


def _is_coco_class_set(data_cfg: dict, catalog) -> bool:
    """True for the DeFRCN class sets of COCO itself (its ids mean COCO's classes), where base/novel apply."""
    coco = coco_catalog().id_to_name()
    return is_few_shot(data_cfg) and all(coco.get(i) == n for i, n in zip(catalog.ids, catalog.names))


def _score_coco(data_cfg, catalog, root, batches, output_dir, calibrator, extra):
    class_ids = catalog.ids
    ann, images_folder = coco_split_paths(root, data_cfg["val_split"])
    split_sets = _is_coco_class_set(data_cfg, catalog)
    base = [c for c in class_ids if c in COCO_BASE_IDS] if split_sets else []
    novel = [c for c in class_ids if c in COCO_NOVEL_IDS] if split_sets else []
    evaluator = FewShotCocoEvaluator(ann, max(class_ids) + 1, base_ids=base or None, novel_ids=novel or None,
                                     all_ids=class_ids)
    images = evaluator.coco_gt.imgs

    def image_path(image_id):
        return images_folder / images[image_id]["file_name"]

    for image_ids, scores, labels, boxes in batches:
        evaluator.update(image_ids, _calibrate(calibrator, image_path, image_ids, scores, labels, boxes), labels, boxes)
    stats = evaluator.evaluate()
    if output_dir is not None:
        evaluator.write_results(Path(output_dir) / "bbox_results.json")
        evaluator.write_metrics(Path(output_dir) / "metrics.json", extra)
    return stats, len(set(evaluator.image_ids))


def _score_voc(data_cfg, catalog, root, batches, output_dir, calibrator, extra):
    names = catalog.names
    index = {int(c): k for k, c in enumerate(catalog.ids)}
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
        kept.append((file_ids, _calibrate(calibrator, image_path, image_ids, scores, labels, boxes), indices, boxes))
    # The evaluator is built once the evaluated images are known, so a partial run is scored on its own images.
    use_07 = all(year == 2007 for year, _ in parse_split_spec(data_cfg["val_split"]))
    split_sets = is_few_shot(data_cfg) and data_cfg["class_names"] is None
    split = int(data_cfg["voc_split"]) if split_sets else 0
    base = [n for n in names if n in VOC_BASE_CLASSES[split]] if split_sets else []
    novel = [n for n in names if n in VOC_NOVEL_CLASSES[split]] if split_sets else []
    evaluator = VocEvaluator([records[f] for f in seen], names, use_07, base or None, novel or None)
    for batch in kept:
        evaluator.update(*batch)
    stats = evaluator.evaluate()
    if output_dir is not None:
        evaluator.write_metrics(Path(output_dir) / "metrics.json", extra)
    return stats, len(seen)
