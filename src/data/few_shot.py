"""Few-shot detection splits in the TFA format used by DeFRCN, and the base/novel class lists.

File formats (ucbdrive/few-shot-object-detection ``datasets/README.md``):

* COCO: ``cocosplit/[seed{S}/]full_box_{K}shot_{class name}_trainval.json``, a COCO JSON whose annotations are
  K instances of one class (class names as in COCO, e.g. ``"traffic light"``). TFA keeps seed 0 at the root,
  DeFRCN's download puts it in ``seed0/``; both are accepted.
* VOC: ``vocsplit/[seed{S}/]box_{K}shot_{class}_train.txt``, one image path per line (e.g.
  ``datasets/VOC2007/JPEGImages/000005.jpg``); seed 0 (the FSRW split) at the root (TFA) or in ``seed0/``
  (DeFRCN). An empty list means the class has no examples (a warning, not an error).

Loading semantics:

* COCO follows DeFRCN ``defrcn/data/meta_coco.py``: the per-class files are merged per image id into one
  record holding every selected annotation of that image (no subsampling). Images without any annotation of
  the selected classes are dropped, and an annotation listed twice is kept once.
* VOC follows TFA/DeFRCN ``meta_voc.py``: every instance of the target class in a listed image becomes its
  own record with that single box; if there are more than K, K are drawn at random. Unlike the reference
  (which draws without a seed), the draw uses a NumPy generator seeded from the split seed, so runs repeat.

Class lists follow TFA/DeFRCN ``data/builtin_meta.py``: the VOC "all" order of a split is its 15 base classes
followed by its 5 novel classes; the COCO novel classes are the 20 VOC classes (ids below), the other 60 are
base, both in ascending COCO id order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.data.voc import VOC_CLASSES, VocRecord, parse_voc_xml, voc_annotation_path
from src.errors import InputError

logger = logging.getLogger(__name__)

VOC_NOVEL_CLASSES = {
    1: ("bird", "bus", "cow", "motorbike", "sofa"),
    2: ("aeroplane", "bottle", "cow", "horse", "sofa"),
    3: ("boat", "cat", "motorbike", "sheep", "sofa"),
}
"""Novel classes of the three VOC few-shot splits."""

VOC_BASE_CLASSES = {split: tuple(c for c in VOC_CLASSES if c not in novel) for split, novel in
                    VOC_NOVEL_CLASSES.items()}
"""Base classes of each VOC split, in VOC order."""

VOC_ALL_CLASSES = {split: VOC_BASE_CLASSES[split] + VOC_NOVEL_CLASSES[split] for split in VOC_NOVEL_CLASSES}
"""Label order of each split's all-class ("base_novel") setting: base first, then novel."""

COCO_NOVEL_IDS = (1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
"""COCO category ids of the 20 novel classes."""

COCO_BASE_IDS = tuple(i for i in sorted(COCO_CATEGORY_NAMES) if i not in COCO_NOVEL_IDS)
"""COCO category ids of the 60 base classes."""

COCO_NOVEL_CLASSES = tuple(COCO_CATEGORY_NAMES[i] for i in COCO_NOVEL_IDS)
COCO_BASE_CLASSES = tuple(COCO_CATEGORY_NAMES[i] for i in COCO_BASE_IDS)
COCO_ALL_CLASSES = tuple(COCO_CATEGORY_NAMES[i] for i in sorted(COCO_CATEGORY_NAMES))


class FewShotSplitError(InputError, ValueError):
    """Raised when a few-shot split file is missing or malformed; the message names the file."""


@dataclass
class CocoFewShotRecord:
    """One image of a merged COCO few-shot split.

    Attributes:
        image_id: COCO image id.
        file_name: ``file_name`` from the split JSON (relative to the COCO image folder).
        height, width: image size from the JSON.
        boxes: float32 [n, 4] xyxy absolute pixels (converted from COCO xywh).
        labels: int32 [n], indices into the class list the split was loaded with.
        category_ids: int32 [n], raw COCO category ids.
        iscrowd: int32 [n].
        annotation_ids: int64 [n].
        boxes_xywh: float32 [n, 4], the same boxes as written in the JSON (xywh absolute pixels).
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    annotation_ids: np.ndarray
    boxes_xywh: np.ndarray


# ----------------------------------------------------------------------------------------------------- COCO
def _seed_candidates(split_root: Path, name: str, seed: int) -> List[Path]:
    """Where split file ``name`` of ``seed`` may live, in order of preference: ``seed{S}/`` (DeFRCN; our
    ``prepare_few_shot_split.py`` default), then, for seed 0 only, the root (TFA's release layout)."""
    candidates = [Path(split_root) / f"seed{seed}" / name]
    if seed == 0:
        candidates.append(Path(split_root) / name)
    return candidates


def coco_split_file(split_root: Path, class_name: str, shot: int, seed: int) -> Path:
    """Path of ``full_box_{shot}shot_{class_name}_trainval.json`` for ``seed``.

    Seed S > 0 lives in ``seed{S}/``; seed 0 in ``seed0/`` (DeFRCN) or, failing that, at the root (TFA).

    Raises:
        FewShotSplitError: if no such file exists.
    """
    candidates = _seed_candidates(split_root, f"full_box_{shot}shot_{class_name}_trainval.json", seed)
    for path in candidates:
        if path.is_file():
            return path
    raise FewShotSplitError(f"COCO few-shot file not found; looked for {', '.join(map(str, candidates))}")


def load_coco_few_shot_files(paths: Iterable[Path], class_names: Sequence[str]) -> List[CocoFewShotRecord]:
    """Merge TFA-format COCO split JSONs into one record per image (DeFRCN semantics).

    Args:
        paths: split JSON files (usually one per class).
        class_names: COCO class names to keep; labels index this sequence.

    Returns:
        Records in order of first appearance (file order, then image order within a file).

    Raises:
        FewShotSplitError: unreadable JSON, missing keys, an annotation of an unlisted image, or a class name
            that no file lists among its categories (names the files).
    """
    images: Dict[int, dict] = {}
    anns: Dict[int, List[dict]] = {}
    seen_ann_ids = set()
    known_names = set()
    paths = list(paths)
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            id_to_name = {int(c["id"]): c["name"] for c in data["categories"]}
            file_images = {int(img["id"]): img for img in data["images"]}
            file_anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise FewShotSplitError(f"cannot read COCO few-shot split {path}: {err}") from err
        known_names.update(id_to_name.values())
        for image_id, img in file_images.items():
            images.setdefault(image_id, img)
            anns.setdefault(image_id, [])
        for ann in file_anns:
            try:
                image_id, ann_id, category_id = int(ann["image_id"]), int(ann["id"]), int(ann["category_id"])
            except (KeyError, TypeError, ValueError) as err:
                raise FewShotSplitError(f"{path}: annotation {ann!r} needs integer 'id', 'image_id' and "
                                        f"'category_id' ({err})") from err
            if image_id not in file_images:
                raise FewShotSplitError(f"{path}: annotation {ann_id} refers to unlisted image {image_id}")
            name = id_to_name.get(category_id)
            if name not in class_names or ann_id in seen_ann_ids:
                continue
            seen_ann_ids.add(ann_id)
            anns[image_id].append(dict(ann, _label=class_names.index(name)))
    unknown = [c for c in class_names if c not in known_names]
    if unknown:
        raise FewShotSplitError(f"classes {unknown} are not among the categories of the COCO few-shot split "
                                f"files {', '.join(map(str, paths))}")
    records = []
    for image_id, img in images.items():
        kept = anns[image_id]
        if not kept:
            continue
        xywh = np.asarray([a["bbox"] for a in kept], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        records.append(CocoFewShotRecord(
            image_id=image_id, file_name=img["file_name"], height=int(img["height"]), width=int(img["width"]),
            boxes=boxes, labels=np.asarray([a["_label"] for a in kept], np.int32),
            category_ids=np.asarray([a["category_id"] for a in kept], np.int32),
            iscrowd=np.asarray([a.get("iscrowd", 0) for a in kept], np.int32),
            annotation_ids=np.asarray([a["id"] for a in kept], np.int64), boxes_xywh=xywh))
    return records


def load_coco_few_shot(split_root: Path, class_names: Sequence[str], shot: int, seed: int) -> List[CocoFewShotRecord]:
    """Load ``cocosplit`` for ``class_names`` at ``shot`` shots and ``seed`` (one file per class, merged)."""
    return load_coco_few_shot_files([coco_split_file(split_root, c, shot, seed) for c in class_names],
                                    class_names)


# ----------------------------------------------------------------------------------------------------- VOC
def voc_split_file(split_root: Path, class_name: str, shot: int, seed: int) -> Path:
    """Path of ``box_{shot}shot_{class_name}_train.txt``: in ``seed{S}/``; seed 0 in ``seed0/`` or, failing
    that, at the root (TFA), the same preference as :func:`coco_split_file`. When neither exists the last
    candidate is returned and :func:`read_voc_split_list` reports it missing."""
    candidates = _seed_candidates(split_root, f"box_{shot}shot_{class_name}_train.txt", seed)
    return next((path for path in candidates if path.is_file()), candidates[-1])


def read_voc_split_list(path: Path) -> List[str]:
    """File ids listed in a VOC split file (the stem of each line's image path), in file order.

    An empty file gives an empty list: TFA's sampler finds no image for a class absent from the devkit, and
    its loader reads such a file as no images.

    Raises:
        FewShotSplitError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise FewShotSplitError(f"VOC few-shot list not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FewShotSplitError(f"cannot read VOC few-shot list {path}: {err}") from err
    return [Path(line.strip()).stem for line in text.splitlines() if line.strip()]


def load_voc_few_shot(split_root: Path, devkit_root: Path, class_names: Sequence[str], shot: int,
                      seed: int) -> List[VocRecord]:
    """Instance-level few-shot VOC records (TFA/DeFRCN ``meta_voc`` semantics, seeded draw).

    Args:
        split_root: the ``vocsplit`` folder.
        devkit_root: the ``VOCdevkit`` folder holding ``VOC2007`` and ``VOC2012``.
        class_names: classes of the setting (e.g. ``VOC_ALL_CLASSES[1]``); labels index this sequence.
        shot: K.
        seed: split seed; also seeds the draw when a class has more than K instances.

    Returns:
        Per class (in ``class_names`` order), at most K records, each with exactly one box of that class.

    Raises:
        FewShotSplitError: a missing split list or a class name that is not a VOC class (names the list).
        VocFormatError: a missing or malformed annotation.
    """
    rng = np.random.default_rng(seed)
    records: List[VocRecord] = []
    for class_name in class_names:
        path = voc_split_file(split_root, class_name, shot, seed)
        if class_name not in VOC_CLASSES:
            raise FewShotSplitError(f"unknown VOC class {class_name!r} (its split list would be {path}); "
                                    f"known: {', '.join(VOC_CLASSES)}")
        per_class = []
        file_ids = read_voc_split_list(path)
        if not file_ids:
            logger.warning("VOC few-shot list %s is empty: no %s examples at %d shots", path, class_name, shot)
        for file_id in file_ids:
            full = parse_voc_xml(voc_annotation_path(devkit_root, file_id), class_names)
            for k in np.nonzero(full.labels == class_names.index(class_name))[0]:
                per_class.append(VocRecord(full.file_id, full.file_name, full.height, full.width,
                                           full.boxes[k:k + 1], full.labels[k:k + 1], full.difficult[k:k + 1]))
        if len(per_class) > shot:
            chosen = rng.choice(len(per_class), shot, replace=False)
            per_class = [per_class[i] for i in sorted(chosen)]
        records.extend(per_class)
    return records
