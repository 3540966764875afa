"""Prototypical Calibration Block (PCB) of DeFRCN, evaluation only.

Follows er-muyue/DeFRCN ``defrcn/evaluation/calibration_layer.py`` (``PrototypicalCalibrationBlock``):

* Features: an ImageNet classifier (torchvision ResNet-101) sees the original-resolution test or support
  image, normalised with the ImageNet mean/std in RGB order. Each box is pooled from ``layer4`` with an
  aligned ROIAlign (1 x 1 output, scale 1/32) and passed through the classifier's ``fc``; the 1000-d logit
  vector is the box's feature.
* Prototypes: per class, the plain mean of the (unnormalised) support features of that class. There is no L2
  normalisation before the mean; the cosine similarity normalises both sides afterwards.
* Calibration: for every detection whose score s satisfies ``lower < s <= upper`` (DeFRCN: 0.05 and 1.0; the
  reference counts ``score > upper`` and ``score > lower`` on score-sorted detections, which is this rule)
  and whose class is not excluded, ``s <- alpha * s + (1 - alpha) * cos(feature, prototype[class])`` with
  alpha = 0.5. In the generalized (gFSOD, "test_all") setting the base classes are excluded; in FSOD nothing
  is.

Class indices are the detector's contiguous ("contracted") indices: the position of the class in the
detector's class list (COCO all: the 80 classes in ascending COCO id order; VOC all: the split's 15 base
then 5 novel classes; novel-only settings: the novel list), background excluded. Prototypes are an array
``[C, D]`` indexed by that position, built from support labels mapped by class NAME with
:func:`support_label_map`, so a shift between label spaces (the old MindSpore port's ``label + 1``) cannot
happen silently.

The calibration math (:class:`PrototypeCalibration`) is separate from the feature extractor
(:class:`PCBFeatureExtractor`); :func:`calibrate_image` joins them for one test image. Prototypes can be
cached per split, seed and extractor (:func:`save_prototype_cache`, :func:`load_prototype_cache`).

The extractor's pooler is detectron2's adaptive one (``sampling_ratio=0``: ``ceil(box side / 32)`` samples per
side, exact for boxes up to 64 x 32 = 2048 px, see ``src/ops/roi_align.py``); a fixed grid stays available.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn, ops

from src.backbones.resnet import RESNET_DEPTHS, ResNet
from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.data.few_shot import COCO_ALL_CLASSES, COCO_BASE_CLASSES, VOC_ALL_CLASSES, VOC_BASE_CLASSES
from src.errors import InputError
from src.fileio import atomic_write_bytes
from src.ops.roi_align import ROIAlignV2

PCB_ALPHA = 0.5
PCB_LOWER = 0.05
PCB_UPPER = 1.0
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CACHE_FORMAT_VERSION = 1


class PrototypeCacheError(InputError, ValueError):
    """A prototype cache file is unreadable or was built for another split, seed, extractor or class list."""


# --------------------------------------------------------------------------------------------- class maps
def support_label_map(support_class_names: Sequence[str], detector_class_names: Sequence[str]) -> np.ndarray:
    """Map support labels (indices into ``support_class_names``) to detector class indices, by name.

    Returns:
        int64 [len(support_class_names)]: entry i is the index of ``support_class_names[i]`` in
        ``detector_class_names``.

    Raises:
        ValueError: a support class the detector does not have, or duplicate detector class names.
    """
    if len(set(detector_class_names)) != len(detector_class_names):
        raise ValueError(f"detector class names are not unique: {list(detector_class_names)}")
    position = {name: i for i, name in enumerate(detector_class_names)}
    missing = [name for name in support_class_names if name not in position]
    if missing:
        raise ValueError(f"support classes {missing} are not detector classes {list(detector_class_names)}")
    return np.asarray([position[name] for name in support_class_names], np.int64)


def coco_category_to_index(category_ids: Iterable[int], detector_class_names: Sequence[str]) -> np.ndarray:
    """Detector class index (int64) of each raw COCO category id, through the COCO class name."""
    ids = [int(i) for i in category_ids]
    unknown = [i for i in ids if i not in COCO_CATEGORY_NAMES]
    if unknown:
        raise ValueError(f"unknown COCO category ids {unknown}")
    return support_label_map(tuple(COCO_CATEGORY_NAMES[i] for i in ids), detector_class_names)


def gfsod_excluded_classes(dataset: str, split: int | None = None) -> Tuple[int, ...]:
    """Detector indices of the base classes in the generalized (all-class) setting, which PCB leaves alone.

    DeFRCN's ``clsid_filter`` hard-codes these as 0-based indices of the all-class list; here they are
    derived from the class lists of ``src/data/few_shot.py``.

    Args:
        dataset: ``"coco"`` or ``"voc"``.
        split: VOC split (1, 2 or 3); ignored for COCO.

    Raises:
        ValueError: unknown dataset or VOC split.
    """
    if dataset == "coco":
        names, base = COCO_ALL_CLASSES, COCO_BASE_CLASSES
    elif dataset == "voc":
        if split not in VOC_ALL_CLASSES:
            raise ValueError(f"VOC split must be one of {sorted(VOC_ALL_CLASSES)}, got {split!r}")
        names, base = VOC_ALL_CLASSES[split], VOC_BASE_CLASSES[split]
    else:
        raise ValueError(f"dataset must be 'coco' or 'voc', got {dataset!r}")
    return tuple(sorted(int(i) for i in support_label_map(base, names)))


# ----------------------------------------------------------------------------------------------- prototypes
@dataclass
class Prototypes:
    """Per-class support prototypes in the detector's class order.

    Attributes:
        vectors: float32 [C, D], row k is the mean support feature of detector class k (zeros if absent).
        counts: int64 [C], number of support boxes behind each row (0: no prototype).
        class_names: the detector's class list (length C), background excluded.
        split: name of the support split (e.g. ``"coco14_trainval_all_10shot"``).
        seed: split seed.
        extractor_id: identifies the feature extractor and its weights (see :func:`extractor_fingerprint`).
    """

    vectors: np.ndarray
    counts: np.ndarray
    class_names: Tuple[str, ...]
    split: str
    seed: int
    extractor_id: str

    @property
    def feature_dim(self) -> int:
        return int(self.vectors.shape[1])


def build_prototypes(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], split: str,
                     seed: int, extractor_id: str) -> Prototypes:
    """Per-class mean of support features (DeFRCN ``build_prototypes``).

    Args:
        features: float [M, D] support box features.
        labels: int [M] detector class index of each support box (map dataset labels with
            :func:`support_label_map` first).
        class_names: the detector's class list; C = its length.
        split, seed, extractor_id: provenance stored with the prototypes.

    Raises:
        ValueError: mismatched lengths, a non-2-D feature array or a label outside [0, C).
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64).reshape(-1)
    num_classes = len(class_names)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not pair up as [M, D] / [M]")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"support labels {sorted(set(bad.tolist()))} outside [0, {num_classes})")
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    sums = np.zeros((num_classes, features.shape[1]), np.float64)
    np.add.at(sums, labels, features)
    vectors = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return Prototypes(vectors, counts, tuple(class_names), str(split), int(seed), str(extractor_id))


def save_prototype_cache(path: str | os.PathLike, prototypes: Prototypes) -> Path:
    """Write ``prototypes`` to an ``.npz`` atomically (no pickled objects) and return the path."""
    buffer = io.BytesIO()
    np.savez(buffer, version=np.int64(CACHE_FORMAT_VERSION), vectors=prototypes.vectors.astype(np.float32),
             counts=prototypes.counts.astype(np.int64), class_names=np.asarray(prototypes.class_names, np.str_),
             feature_dim=np.int64(prototypes.feature_dim), split=np.str_(prototypes.split),
             seed=np.int64(prototypes.seed), extractor_id=np.str_(prototypes.extractor_id))
    return atomic_write_bytes(path, buffer.getvalue())


def load_prototype_cache(path: str | os.PathLike, split: str, seed: int, extractor_id: str,
                         class_names: Sequence[str]) -> Prototypes:
    """Read a cache written by :func:`save_prototype_cache`, checking it was built for this run.

    Raises:
        FileNotFoundError: no file at ``path``.
        PrototypeCacheError: unreadable file, or a split, seed, extractor, class list or feature dimension
            other than expected (the message names the file and each mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prototype cache {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {key: data[key] for key in data.files}
        cached = Prototypes(fields["vectors"].astype(np.float32), fields["counts"].astype(np.int64),
                            tuple(str(n) for n in fields["class_names"]), str(fields["split"]),
                            int(fields["seed"]), str(fields["extractor_id"]))
        version, feature_dim = int(fields["version"]), int(fields["feature_dim"])
    except (OSError, ValueError, KeyError) as err:
        raise PrototypeCacheError(f"cannot read prototype cache {path}: {err}") from err
    problems = []
    if version != CACHE_FORMAT_VERSION:
        problems.append(f"format version {version} (expected {CACHE_FORMAT_VERSION})")
    if cached.split != split:
        problems.append(f"split {cached.split!r} (expected {split!r})")
    if cached.seed != int(seed):
        problems.append(f"seed {cached.seed} (expected {int(seed)})")
    if cached.extractor_id != extractor_id:
        problems.append(f"feature extractor {cached.extractor_id!r} (expected {extractor_id!r})")
    if cached.class_names != tuple(class_names):
        problems.append(f"class list {list(cached.class_names)} (expected {list(class_names)})")
    if cached.vectors.shape != (len(cached.class_names), feature_dim) or cached.counts.shape != (
            len(cached.class_names),):
        problems.append(f"prototype array {cached.vectors.shape} inconsistent with feature_dim {feature_dim}")
    if problems:
        raise PrototypeCacheError(f"prototype cache {path} was built for another run: " + "; ".join(problems))
    return cached


# ---------------------------------------------------------------------------------------------- calibration
class PrototypeCalibration(nn.Cell):
    """Static-shape PCB score calibration for one image's detections.

    Args:
        prototypes: float [C, D] (row k: prototype of detector class k).
        calibrate_class: bool [C]; False for classes left untouched (excluded base classes in gFSOD, or
            classes without a prototype).
        alpha: weight of the detector score (DeFRCN ``PCB_ALPHA`` 0.5).
        lower, upper: scores in ``(lower, upper]`` are calibrated (DeFRCN 0.05 and 1.0).

    Inputs:
        scores: float32 [N] detection scores.
        labels: int32 [N] detector class indices; rows with a label outside [0, C) (e.g. -1 padding) are
            returned unchanged.
        features: float32 [N, D] PCB features of the detection boxes.

    Outputs:
        float32 [N] calibrated scores. Cosine similarity follows sklearn's ``cosine_similarity``: a zero
        vector has similarity 0 with everything.
    """

    def __init__(self, prototypes: np.ndarray, calibrate_class: np.ndarray, alpha: float = PCB_ALPHA,
                 lower: float = PCB_LOWER, upper: float = PCB_UPPER):
        super().__init__()
        protos = np.asarray(prototypes, np.float64)
        norms = np.linalg.norm(protos, axis=1, keepdims=True)
        self.unit_prototypes = Tensor((protos / np.where(norms == 0, 1.0, norms)).astype(np.float32))
        self.calibrate_class = Tensor(np.asarray(calibrate_class, np.bool_))
        self.num_classes = int(protos.shape[0])
        self.alpha = float(alpha)
        self.lower = float(lower)
        self.upper = float(upper)

    def construct(self, scores: Tensor, labels: Tensor, features: Tensor) -> Tensor:
        known = (labels >= 0) & (labels < self.num_classes)
        safe = ops.clip_by_value(labels, 0, self.num_classes - 1)
        protos = ops.gather(self.unit_prototypes, safe, 0)
        norms = ops.sqrt(ops.reduce_sum(features * features, -1))
        norms = ops.select(norms > 0, norms, ops.ones_like(norms))
        cosine = ops.reduce_sum(features * protos, -1) / norms
        in_range = (scores > self.lower) & (scores <= self.upper)
        apply = in_range & known & ops.gather(self.calibrate_class, safe, 0)
        return ops.select(apply, self.alpha * scores + (1.0 - self.alpha) * cosine, scores)


def build_calibration(prototypes: Prototypes, exclude_classes: Iterable[int] = (), alpha: float = PCB_ALPHA,
                      lower: float = PCB_LOWER, upper: float = PCB_UPPER) -> PrototypeCalibration:
    """A :class:`PrototypeCalibration` for ``prototypes`` leaving ``exclude_classes`` (detector indices) alone.

    Classes with no support box are not calibrated either (DeFRCN would fail on them with a KeyError; in its
    settings every evaluated class has support boxes).

    Raises:
        ValueError: an excluded class index outside [0, C).
    """
    num_classes = len(prototypes.class_names)
    excluded = sorted(set(int(i) for i in exclude_classes))
    if any(i < 0 or i >= num_classes for i in excluded):
        raise ValueError(f"excluded classes {excluded} outside [0, {num_classes})")
    calibrate = prototypes.counts > 0
    calibrate[excluded] = False
    return PrototypeCalibration(prototypes.vectors, calibrate, alpha, lower, upper)


# ------------------------------------------------------------------------------------------ feature extractor
class _ImageNetResNet(ResNet):
    """torchvision ImageNet classifier layout: the ResNet trunk plus ``fc`` (parameter names as torchvision)."""

    def __init__(self, depths: Sequence[int], num_logits: int):
        super().__init__(depths)
        self.fc = nn.Dense(2048, num_logits)


class PCBFeatureExtractor(nn.Cell):
    """PCB box features: ImageNet ResNet ``layer4`` -> aligned ROIAlign 1x1 at 1/32 -> ``fc`` logits.

    Parameter names are torchvision's ``resnet101`` names under ``net.`` (``net.conv1.weight``,
    ``net.layer4.2.bn3.running_var``, ``net.fc.weight`` [1000, 2048], ...); batch norm is frozen (eval mode).

    Args:
        depth: ``"resnet101"`` (DeFRCN) or ``"resnet50"``; ``depths`` overrides it (tests use tiny trunks).
        num_logits: fc output size (1000 for ImageNet).
        sampling_ratio: ROIAlign samples per side of the single bin; 0 (default) is detectron2's adaptive grid.
        max_grid: adaptive mode: the most samples per side (64).

    Inputs:
        image: float32 [1, 3, H, W], RGB, ImageNet-normalised, original resolution (see :func:`pcb_preprocess`).
        boxes: float32 [R, 4] xyxy in original-image pixels.

    Outputs:
        float32 [R, num_logits].
    """

    def __init__(self, depth: str = "resnet101", num_logits: int = 1000, sampling_ratio: int = 0,
                 depths: Sequence[int] | None = None, max_grid: int = 64):
        super().__init__()
        self.net = _ImageNetResNet(depths or RESNET_DEPTHS[depth], num_logits)
        self.pooler = ROIAlignV2(1, 1.0 / 32, sampling_ratio, max_grid)

    def construct(self, image: Tensor, boxes: Tensor) -> Tensor:
        feature = self.net(image)
        pooled = self.pooler(feature, boxes.expand_dims(0))
        return self.net.fc(pooled.reshape(pooled.shape[0], -1))


def pcb_preprocess(image_bgr: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] BGR (``cv2.imread``) -> float32 [1, 3, H, W] RGB, ``(x / 255 - mean) / std``, unpadded."""
    rgb = np.asarray(image_bgr, np.float32)[:, :, ::-1] / 255.0
    normed = (rgb - np.asarray(IMAGENET_MEAN_RGB, np.float32)) / np.asarray(IMAGENET_STD_RGB, np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1)[None])


def extractor_fingerprint(extractor: nn.Cell, name: str = "pcb-resnet") -> str:
    """``name`` plus a SHA-256 over the extractor's parameter names, shapes and values (for cache checks)."""
    digest = hashlib.sha256()
    for param in sorted(extractor.get_parameters(), key=lambda p: p.name):
        value = param.asnumpy()
        digest.update(f"{param.name}:{value.shape}:{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return f"{name}:{digest.hexdigest()[:16]}"


def extract_support_features(extractor: nn.Cell,
                             samples: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray]]
                             ) -> Tuple[np.ndarray, np.ndarray]:
    """Features of every support box.

    Args:
        extractor: a :class:`PCBFeatureExtractor` (or any Cell with the same inputs and outputs).
        samples: ``(image_bgr uint8 [H, W, 3], boxes float [n, 4] xyxy original pixels, labels int [n]
            detector class indices)`` per support image.

    Returns:
        (features float32 [M, D], labels int64 [M]).
    """
    features, labels = [], []
    for image_bgr, boxes, box_labels in samples:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if boxes.shape[0] == 0:
            continue
        out = extractor(Tensor(pcb_preprocess(image_bgr)), Tensor(boxes))
        features.append(out.asnumpy())
        labels.append(np.asarray(box_labels, np.int64).reshape(-1))
    if not features:
        raise ValueError("no support boxes: the support set is empty")
    return np.concatenate(features), np.concatenate(labels)


def calibrate_image(extractor: nn.Cell, calibration: PrototypeCalibration, image_bgr: np.ndarray,
                    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """PCB for one test image (DeFRCN ``execute_calibration``; its test batch is 1 as well).

    Args:
        extractor: a :class:`PCBFeatureExtractor`.
        calibration: from :func:`build_calibration`.
        image_bgr: uint8 [H, W, 3] BGR, the original image (detections are in its pixel coordinates).
        boxes: float [N, 4] xyxy original-image pixels; scores: float [N]; labels: int [N] detector class
            indices (padding rows may carry any box and a label of -1).

    Returns:
        float32 [N] calibrated scores (rows outside the score range, excluded or padding rows unchanged).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if boxes.shape[0] == 0:
        return scores
    features = extractor(Tensor(pcb_preprocess(image_bgr)), Tensor(boxes))
    out = calibration(Tensor(scores), Tensor(np.asarray(labels, np.int32).reshape(-1)), features)
    return out.asnumpy()
