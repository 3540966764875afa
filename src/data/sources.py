"""Class sets of the DeFRCN data family: which dataset ids a detector predicts, in which label order.

Dataset id spaces (SPEC2): COCO records carry raw COCO category ids (1..90); VOC records carry
``1 + VOC_CLASSES.index(name)`` (aeroplane = 1 .. tvmonitor = 20). A detector's contiguous label ``k`` is the
class ``detector_class_ids(data_cfg)[k]``.

Orders follow TFA/DeFRCN ``data/builtin_meta.py``: COCO classes in ascending id order (all 80, the 60 base or
the 20 novel); VOC split ``s`` lists its 15 base classes and then its 5 novel classes for ``all`` (the
``base_novel_s`` order that surgery relies on), the base or novel names alone otherwise.
"""

from __future__ import annotations

from typing import Dict, Tuple

from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.data.few_shot import (
    COCO_BASE_IDS,
    COCO_NOVEL_IDS,
    VOC_ALL_CLASSES,
    VOC_BASE_CLASSES,
    VOC_NOVEL_CLASSES,
)
from src.data.voc import VOC_CLASSES

DATASETS = ("coco", "voc")
CLASS_SETS = ("all", "base", "novel")


def voc_class_id(name: str) -> int:
    """VOC dataset id of a class name: 1 + its index in ``VOC_CLASSES``.

    Raises:
        ValueError: ``name`` is not a VOC class.
    """
    if name not in VOC_CLASSES:
        raise ValueError(f"unknown VOC class {name!r}; known: {', '.join(VOC_CLASSES)}")
    return 1 + VOC_CLASSES.index(name)


def _dataset(data_cfg: dict) -> str:
    dataset = data_cfg.get("dataset", "coco")
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
    return dataset


def _class_set(data_cfg: dict) -> str:
    classes = data_cfg.get("classes", "all")
    if classes not in CLASS_SETS:
        raise ValueError(f"data.classes must be one of {CLASS_SETS}, got {classes!r}")
    return classes


def _voc_split(data_cfg: dict) -> int:
    split = data_cfg.get("voc_split", 1)
    if split not in VOC_NOVEL_CLASSES:
        raise ValueError(f"data.voc_split must be one of {sorted(VOC_NOVEL_CLASSES)}, got {split!r}")
    return int(split)


def detector_class_names(data_cfg: dict) -> Tuple[str, ...]:
    """Names of the classes the detector predicts, in its contiguous label order.

    Args:
        data_cfg: the ``data`` config section; reads ``dataset`` (coco | voc, default coco), ``classes``
            (all | base | novel, default all) and, for VOC, ``voc_split`` (1 | 2 | 3, default 1).

    Returns:
        COCO names (e.g. ``"traffic light"``) or VOC names (e.g. ``"tvmonitor"``), same order as
        :func:`detector_class_ids`.

    Raises:
        ValueError: an unknown dataset, class set or VOC split (names the key).
    """
    dataset, classes = _dataset(data_cfg), _class_set(data_cfg)
    if dataset == "coco":
        return tuple(COCO_CATEGORY_NAMES[i] for i in detector_class_ids(data_cfg))
    split = _voc_split(data_cfg)
    return {"all": VOC_ALL_CLASSES, "base": VOC_BASE_CLASSES, "novel": VOC_NOVEL_CLASSES}[classes][split]


def detector_class_ids(data_cfg: dict) -> Tuple[int, ...]:
    """Dataset category ids of the classes the detector predicts, in its contiguous label order.

    COCO: all = the 80 ids ascending, base = the 60 base ids ascending, novel = the 20 novel ids ascending.
    VOC split s: all = ``VOC_ALL_CLASSES[s]`` (15 base then 5 novel), base = ``VOC_BASE_CLASSES[s]``,
    novel = ``VOC_NOVEL_CLASSES[s]``, each as a VOC id (:func:`voc_class_id`). The number of detector classes
    is ``len(detector_class_ids(data_cfg))``.

    Raises:
        ValueError: as :func:`detector_class_names`.
    """
    dataset, classes = _dataset(data_cfg), _class_set(data_cfg)
    if dataset == "coco":
        return {"all": tuple(sorted(COCO_CATEGORY_NAMES)), "base": COCO_BASE_IDS, "novel": COCO_NOVEL_IDS}[classes]
    return tuple(voc_class_id(name) for name in detector_class_names(data_cfg))


def dataset_categories(data_cfg: dict) -> Dict[int, str]:
    """The whole id space of ``data_cfg``'s dataset: COCO id -> COCO name, or VOC id -> VOC name."""
    if _dataset(data_cfg) == "coco":
        return dict(COCO_CATEGORY_NAMES)
    return {voc_class_id(name): name for name in VOC_CLASSES}
