"""PCB at evaluation time: feature extractor from a checkpoint, support prototypes (cached), per-image calibration.

Follows er-muyue/DeFRCN ``defrcn/evaluation/evaluator.py`` (``inference_on_dataset`` builds the
``PrototypicalCalibrationBlock`` once, then calibrates every test image's detections) and
``calibration_layer.py``:

* the support set is the fine-tune split (``cfg.DATASETS.TRAIN[0]``: here the ``train`` source of the data
  config, i.e. the K-shot files of ``data.shot`` / ``data.seed``), read at original resolution from the image
  files (``cv2.imread``), with its non-crowd ground-truth boxes;
* prototypes are per-class means of the extractor's 1000-d features (:mod:`src.models.defrcn.pcb`), cached as
  ``.npz`` per support set (the source name carries the split, shot and seed) and extractor fingerprint, and
  checked against the run on load;
* in the generalized setting (``data.classes: all``) the base classes are left alone (DeFRCN ``clsid_filter``);
  otherwise every class with a prototype is calibrated.

Class indices: detections carry dataset ids (the DeFRCN post-process maps contiguous labels to ids); they are
mapped back to the detector's contiguous index through ``src.data.sources.detector_class_ids``, and support
boxes likewise, so prototypes and detections share one index space by construction.

The extractor takes images of any size (dynamic input shapes), so graph mode compiles it once instead of
once per image size.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterator, Sequence, Tuple

import cv2
import mindspore as ms
import numpy as np
from mindspore import Tensor

from src.checkpoint import load_pretrained
from src.data.sources import detector_class_ids, detector_class_names, load_source
from src.models.defrcn.pcb import (
    PCBFeatureExtractor,
    PrototypeCacheError,
    Prototypes,
    build_calibration,
    build_prototypes,
    calibrate_image,
    extract_support_features,
    extractor_fingerprint,
    gfsod_excluded_classes,
    load_prototype_cache,
    save_prototype_cache,
)
from src.progress import track

logger = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^net\.layer(?P<stage>[1-4])\.(?P<block>\d+)\.")


def read_image_bgr(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] BGR of an image file (``cv2.imread``, as DeFRCN's PCB reads images).

    Raises:
        FileNotFoundError: missing or undecodable file (names it).
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"PCB: cannot read image {path}")
    return image


def extractor_depths(checkpoint: str | Path) -> Tuple[int, int, int, int]:
    """Blocks per ResNet stage of a PCB extractor checkpoint, from its ``net.layer{i}.{j}.*`` keys.

    Raises:
        FileNotFoundError: missing file. ValueError: a checkpoint without the four ``net.layer*`` stages (e.g. a
            detector checkpoint or an unconverted torchvision file).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"PCB model {path} does not exist (eval.pcb_model; make it with "
                                "tools/convert_weights.py --model resnet_torchvision)")
    blocks = {stage: 0 for stage in range(1, 5)}
    for name in ms.load_checkpoint(str(path)):
        match = _LAYER_KEY.match(name)
        if match:
            stage = int(match.group("stage"))
            blocks[stage] = max(blocks[stage], int(match.group("block")) + 1)
    if not all(blocks.values()):
        raise ValueError(f"PCB model {path} has no net.layer1..4 blocks ({blocks}); expected the output of "
                         "tools/convert_weights.py --model resnet_torchvision")
    return tuple(blocks[s] for s in range(1, 5))


def load_pcb_extractor(checkpoint: str | Path) -> Tuple[PCBFeatureExtractor, str]:
    """The PCB feature extractor with the weights of ``checkpoint`` (strict), in eval mode, and its fingerprint.

    Raises:
        FileNotFoundError, ValueError: see :func:`extractor_depths`. KeyError: keys that do not match.
    """
    extractor = PCBFeatureExtractor(depths=extractor_depths(checkpoint))
    load_pretrained(str(checkpoint), extractor, strict=True)
    extractor.set_train(False)
    extractor.set_inputs(Tensor(shape=[1, 3, None, None], dtype=ms.float32), Tensor(shape=[None, 4], dtype=ms.float32))
    return extractor, extractor_fingerprint(extractor)


def _index_of_id(class_ids: Sequence[int]) -> Dict[int, int]:
    return {int(c): k for k, c in enumerate(class_ids)}


def support_samples(root, data_cfg: dict) -> Tuple[str, Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """The PCB support set: (set name, samples per image file, number of boxes).

    Records sharing an image file (VOC few-shot keeps one record per instance) are merged so each image is read
    and run once. Samples are ``(image_bgr uint8 [H, W, 3], boxes float32 [n, 4] xyxy original pixels, labels
    int64 [n] detector class indices)``; crowd boxes are left out (detectron2's mapper drops them).
    """
    data = load_source(root, data_cfg, "train", check_files=False)
    index = _index_of_id(detector_class_ids(data_cfg))
    per_file: Dict[str, list] = {}
    for record in data.records:
        keep = record.iscrowd == 0
        xywh = np.asarray(record.boxes, np.float32).reshape(-1, 4)[keep]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.asarray([index[int(c)] for c in record.category_ids[keep]], np.int64)
        per_file.setdefault(record.file_name, []).append((boxes, labels))
    total = sum(len(labels) for parts in per_file.values() for _, labels in parts)

    def samples():
        for file_name, parts in per_file.items():
            yield (read_image_bgr(data.images_folder / file_name), np.concatenate([b for b, _ in parts]),
                   np.concatenate([lab for _, lab in parts]))

    return data.name, samples(), total


def support_prototypes(extractor, extractor_id: str, root, data_cfg: dict, cache_dir: str | Path) -> Prototypes:
    """Prototypes of the support set of ``data_cfg``: read from the cache, or built and cached.

    The cache file is ``cache_dir/<support set name>__<extractor id>.npz``; a file that does not match the run
    (class list, seed, extractor) is rebuilt with a warning.
    """
    names = detector_class_names(data_cfg)
    seed = int(data_cfg["seed"])
    set_name, samples, total = support_samples(root, data_cfg)
    path = Path(cache_dir) / f"{set_name}__{re.sub(r'[^A-Za-z0-9_.-]+', '-', extractor_id)}.npz"
    try:
        prototypes = load_prototype_cache(path, set_name, seed, extractor_id, names)
        logger.info("PCB: prototypes of %s read from %s", set_name, path)
        return prototypes
    except FileNotFoundError:
        pass
    except PrototypeCacheError as err:
        logger.warning("PCB: rebuilding the prototype cache: %s", err)
    features, labels = extract_support_features(
        extractor, track(samples, total, f"PCB prototypes of {set_name}", unit="box", count=lambda s: len(s[2])))
    prototypes = build_prototypes(features, labels, names, set_name, seed, extractor_id)
    save_prototype_cache(path, prototypes)
    logger.info("PCB: %d support boxes of %s -> prototypes of %d classes, cached in %s", total, set_name,
                int((prototypes.counts > 0).sum()), path)
    return prototypes


class PCBCalibrator:
    """DeFRCN's PCB for an evaluation run: call it on each test image's post-processed detections.

    A :class:`src.models.contract.ScoreCalibrator` (``name`` "PCB"), built by DeFRCN's
    :func:`src.models.defrcn.model.build_score_calibrator`.

    Args:
        cfg: the config (``data`` and the ``eval.pcb_*`` keys).
        root: dataset root (``--coco_path``).
        cache_dir: prototype cache folder.

    Raises:
        FileNotFoundError, ValueError, KeyError: a missing or unusable ``eval.pcb_model``, or support data
            errors from ``src.data.sources`` (named).
    """

    name = "PCB"

    def __init__(self, cfg: dict, root, cache_dir: str | Path):
        eval_cfg, data_cfg = cfg["eval"], cfg["data"]
        if not eval_cfg["pcb_model"]:
            raise ValueError("eval.pcb_enable is true but eval.pcb_model is empty; set it to the converted "
                             "torchvision ResNet-101 (tools/convert_weights.py --model resnet_torchvision)")
        self.extractor, extractor_id = load_pcb_extractor(eval_cfg["pcb_model"])
        self.prototypes = support_prototypes(self.extractor, extractor_id, root, data_cfg, cache_dir)
        excluded: Tuple[int, ...] = ()
        if data_cfg["classes"] == "all":
            excluded = gfsod_excluded_classes(data_cfg["dataset"], data_cfg["voc_split"])
        self.excluded = excluded
        self.calibration = build_calibration(self.prototypes, excluded, eval_cfg["pcb_alpha"],
                                             eval_cfg["pcb_lower"], eval_cfg["pcb_upper"])
        self.index = _index_of_id(detector_class_ids(data_cfg))

    def __call__(self, image_path: str | Path, scores: np.ndarray, labels: np.ndarray,
                 boxes: np.ndarray) -> np.ndarray:
        """Calibrated scores of one image's detections.

        Args:
            image_path: the original image file.
            scores: float [D]; labels: int [D] dataset category ids (-1 for empty slots, left unchanged);
            boxes: float [D, 4] xyxy original-image pixels.

        Returns:
            float32 [D].
        """
        index = np.asarray([self.index.get(int(c), -1) for c in np.asarray(labels).reshape(-1)], np.int32)
        if not (index >= 0).any():
            return np.asarray(scores, np.float32).reshape(-1)
        return calibrate_image(self.extractor, self.calibration, read_image_bgr(image_path), boxes, scores, index)
