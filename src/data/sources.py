"""Data sources of every model family: the records of each split a detector trains or tests on.

Kinds of source (:func:`build_source`): a COCO-format split (its own categories, or a DeFRCN class subset of COCO),
TFA-format COCO few-shot files, VOC-format image sets, TFA-format VOC few-shot lists. The classes and their ids
come from the catalog (``src.data.catalog.build_catalog``): COCO-format records carry the file's category ids;
VOC-format records carry ``1 + index`` in the dataset's class list (``data.class_names``, default the 20 Pascal
VOC classes: aeroplane = 1 .. tvmonitor = 20).

DeFRCN class sets (``data.protocol: few_shot``, ``data.classes``): a detector's contiguous label ``k`` is the class
``detector_class_ids(data_cfg)[k]``.

Orders follow TFA/DeFRCN ``data/builtin_meta.py``: COCO classes in ascending id order (all 80, the 60 base or
the 20 novel); VOC split ``s`` lists its 15 base classes and then its 5 novel classes for ``all`` (the
``base_novel_s`` order that surgery relies on), the base or novel names alone otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.data.catalog import Catalog, build_catalog, is_few_shot, voc_class_names
from src.data.coco import CocoFormatError, EmptySplitError, ImageRecord, check_image_file, load_coco_annotations
from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.data.few_shot import (
    COCO_BASE_IDS,
    COCO_NOVEL_IDS,
    VOC_ALL_CLASSES,
    VOC_BASE_CLASSES,
    VOC_NOVEL_CLASSES,
    FewShotSplitError,
    coco_split_file,
    load_coco_few_shot,
    load_voc_few_shot,
    read_voc_split_list,
    voc_split_file,
)
from src.data.voc import (
    VOC_CLASSES,
    VocFormatError,
    VocRecord,
    load_voc_split,
    parse_split_spec,
    read_image_set,
    voc_annotation_path,
    voc_image_id,
)
from src.fileio import file_sha256

logger = logging.getLogger(__name__)

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
    dataset = data_cfg["dataset"]
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
    return dataset


def _class_set(data_cfg: dict) -> str:
    classes = data_cfg["classes"]
    if classes not in CLASS_SETS:
        raise ValueError(f"data.classes must be one of {CLASS_SETS}, got {classes!r}")
    return classes


def class_set(data_cfg: dict) -> str:
    """The class set a config trains and predicts: ``data.classes`` under ``data.protocol: few_shot``, else ``all``.

    Raises:
        ValueError: an unknown ``data.protocol`` or ``data.classes`` (names the key).
    """
    return _class_set(data_cfg) if is_few_shot(data_cfg) else "all"


def _voc_split(data_cfg: dict) -> int:
    split = data_cfg["voc_split"]
    if split not in VOC_NOVEL_CLASSES:
        raise ValueError(f"data.voc_split must be one of {sorted(VOC_NOVEL_CLASSES)}, got {split!r}")
    return int(split)


def detector_class_names(data_cfg: dict) -> Tuple[str, ...]:
    """Names of the classes the detector predicts, in its contiguous label order.

    Args:
        data_cfg: the ``data`` config section of the few-shot protocol; reads ``dataset`` (coco | voc),
            ``classes`` (all | base | novel) and, for VOC, ``voc_split`` (1 | 2 | 3).

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


# ------------------------------------------------------------------------------------------------ sources
TFA_COCO_SPLITS = {
    "trainvalno5k": ("cocosplit/datasplit/trainvalno5k.json", ("trainval2014",)),
    "5k": ("cocosplit/datasplit/5k.json", ("val2014", "trainval2014")),
}
"""TFA's COCO 2014 split names -> (annotation file, candidate image folders) under the dataset root."""

WHICH = ("train", "val")


def coco_split_paths(root, split: str) -> Tuple[Path, Path]:
    """(annotation file, image folder) of a COCO split name under the dataset ``root``.

    TFA 2014 names (``TFA_COCO_SPLITS``) use ``cocosplit/datasplit/{split}.json``; the image folder is the
    first candidate that exists (the last one when none does, so the missing-image error names it). Any
    other name uses the COCO 2017 layout ``annotations/instances_{split}.json`` + ``{split}/``.
    """
    root = Path(root)
    if split in TFA_COCO_SPLITS:
        ann, folders = TFA_COCO_SPLITS[split]
        existing = [root / f for f in folders if (root / f).is_dir()]
        return root / ann, existing[0] if existing else root / folders[-1]
    return root / "annotations" / f"instances_{split}.json", root / split


def few_shot_root_path(root, few_shot_root) -> Path:
    """``few_shot_root`` as a path: absolute as given, relative to the dataset ``root`` otherwise."""
    path = Path(few_shot_root)
    return path if path.is_absolute() else Path(root) / path


def _safe_name(text: str) -> str:
    # File-name safe: '+' of VOC split unions, spaces and separators become '-'.
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _files_identity(index_files: Sequence[Path], other_files: Sequence[Path] = ()) -> dict:
    """Hashes of the files a source reads: index files one by one, the (many) others as one digest."""
    def sha(path: Path) -> str:
        try:
            return file_sha256(path)
        except OSError as err:
            raise FileNotFoundError(f"cannot read {path}: {err}") from err

    identity = {"files": {str(Path(f).resolve()): sha(f) for f in index_files}}
    if other_files:
        digest = hashlib.sha256()
        for f in sorted(str(Path(f).resolve()) for f in other_files):
            digest.update(f"{f}\0{sha(Path(f))}\n".encode())
        identity["num_other_files"] = len(other_files)
        identity["other_files_sha256"] = digest.hexdigest()
    return identity


def _usable_boxes(xywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [n]: finite, positive size and not entirely outside the image (``src.data.coco`` rules)."""
    x, y, w, h = (xywh[:, i].astype(np.float64) for i in range(4))
    finite = np.isfinite(xywh).all(axis=1)
    return finite & (w > 0) & (h > 0) & (x < width) & (y < height) & (x + w > 0) & (y + h > 0)


@dataclass
class SourceData:
    """What a source yields (see the module docstring).

    Attributes:
        name: stable set name, used for the MindRecord file names.
        records: ``src.data.coco.ImageRecord`` list: ``boxes`` float32 [n, 4] xywh absolute pixels,
            ``category_ids`` int32 [n] in the dataset id space (COCO ids or VOC ids), ``iscrowd`` int32 [n],
            ``file_name`` relative to ``images_folder``. Several records may share an image (VOC few-shot).
        images_folder: the folder ``file_name`` is relative to (the VOCdevkit folder for VOC).
        categories: detector classes, dataset id -> name, in label order.
        identity: the stamp identity (``Source.identity``).
        summary: one line of counts.
    """

    name: str
    records: List[ImageRecord]
    images_folder: Path
    categories: Dict[int, str]
    identity: dict
    summary: str


class Source:
    """Base of the four source kinds: a name, an identity and a loader.

    Args:
        name: the set name (``SourceData.name``).
        images_folder: where the images are.
        class_ids: detector classes (dataset ids, label order); other classes' boxes are removed.
        filter_empty: drop images without a non-crowd box after that.
    """

    kind = ""

    def __init__(self, name: str, images_folder: Path, class_ids: Sequence[int], filter_empty: bool):
        self.name = _safe_name(name)
        self.images_folder = Path(images_folder)
        self.class_ids = tuple(int(i) for i in class_ids)
        self.filter_empty = bool(filter_empty)
        self._identity: Optional[dict] = None

    def _settings(self) -> dict:
        return {}

    def _index_files(self) -> Tuple[List[Path], List[Path]]:
        raise NotImplementedError

    def _read(self, check_files: bool, verify_decode: bool) -> Tuple[List[ImageRecord], str]:
        raise NotImplementedError

    def _categories(self) -> Dict[int, str]:
        """Detector class id -> name; subclasses that know their names up front set ``class_names``."""
        return dict(zip(self.class_ids, self.class_names))

    def identity(self) -> dict:
        """JSON-ready identity: kind, class ids, settings, image folder and file hashes (computed once).

        Raises:
            FileNotFoundError, CocoFormatError, VocFormatError, FewShotSplitError: a file to hash is missing
                (the message names it).
        """
        if self._identity is None:
            index_files, other_files = self._index_files()
            self._identity = {"kind": self.kind, "class_ids": list(self.class_ids),
                              "filter_empty": self.filter_empty, "images_folder": str(self.images_folder.resolve()),
                              **self._settings(), **_files_identity(index_files, other_files)}
        return self._identity

    def load(self, check_files: bool = True, verify_decode: bool = False) -> SourceData:
        """Read, filter and check the records.

        Args:
            check_files: check that each image exists with the annotated size (header read).
            verify_decode: also decode each image fully.

        Raises:
            CocoFormatError, VocFormatError, FewShotSplitError: invalid files (named in the message).
            EmptySplitError: no image is left (names the files read).
        """
        identity = self.identity()
        records, summary = self._read(check_files, verify_decode)
        records = [self._keep_classes(r) for r in records]
        dropped = 0
        if self.filter_empty:
            kept = [r for r in records if (r.iscrowd == 0).any()]
            dropped, records = len(records) - len(kept), kept
        if not records:
            files = ", ".join(str(p) for p in self._index_files()[0])
            raise EmptySplitError(f"data source {self.name} has no image left (classes {list(self.class_ids)}, "
                                  f"filter_empty={self.filter_empty}; read from {files}): {summary}; check the "
                                  f"split name, the classes and those files")
        boxes = sum(len(r.boxes) for r in records)
        summary = (f"{summary}; {len(records)} images and {boxes} boxes of {len(self.class_ids)} classes kept, "
                   f"{dropped} images without a non-crowd box dropped")
        logger.info("%s: %s", self.name, summary)
        return SourceData(self.name, records, self.images_folder, self._categories(), identity, summary)

    def _keep_classes(self, record: ImageRecord) -> ImageRecord:
        keep = np.isin(record.category_ids, self.class_ids)
        if keep.all():
            return record
        return ImageRecord(record.image_id, record.file_name, record.height, record.width, record.boxes[keep],
                           record.category_ids[keep], record.iscrowd[keep], record.annotation_ids[keep])


class CocoSource(Source):
    """A whole COCO split (2017 layout or TFA 2014 names) restricted to ``class_ids``."""

    kind = "coco"

    def __init__(self, name: str, annotation_path: Path, images_folder: Path, class_ids: Sequence[int],
                 filter_empty: bool):
        super().__init__(name, images_folder, class_ids, filter_empty)
        self.annotation_path = Path(annotation_path)
        self._names: Dict[int, str] = {}  # the file's names of class_ids, known after _read

    def _index_files(self):
        if not self.annotation_path.is_file():
            raise CocoFormatError(f"COCO annotation file not found: {self.annotation_path}")
        return [self.annotation_path], []

    def _read(self, check_files, verify_decode):
        records, categories, summary = load_coco_annotations(self.annotation_path, self.images_folder, check_files,
                                                             verify_decode)
        missing = [i for i in self.class_ids if i not in categories]
        if missing:
            raise CocoFormatError(f"{self.annotation_path}: category ids {missing} of the requested classes are "
                                  f"not among its categories")
        self._names = {i: categories[i] for i in self.class_ids}
        return records, str(summary)

    def _categories(self):
        return dict(self._names)


class CocoFewShotSource(Source):
    """TFA-format COCO K-shot files of the classes ``class_ids``, merged per image (DeFRCN ``meta_coco.py``)."""

    kind = "coco_few_shot"

    def __init__(self, name: str, split_root: Path, images_folder: Path, class_ids: Sequence[int], shot: int,
                 seed: int, filter_empty: bool):
        super().__init__(name, images_folder, class_ids, filter_empty)
        self.split_root, self.shot, self.seed = Path(split_root), int(shot), int(seed)
        self.class_names = tuple(COCO_CATEGORY_NAMES[i] for i in self.class_ids)

    def _settings(self):
        return {"shot": self.shot, "seed": self.seed}

    def _index_files(self):
        return [coco_split_file(self.split_root, c, self.shot, self.seed) for c in self.class_names], []

    def _read(self, check_files, verify_decode):
        records, skipped = [], 0
        for r in load_coco_few_shot(self.split_root, self.class_names, self.shot, self.seed):
            if check_files:
                check_image_file(self.images_folder, r.file_name, r.height, r.width, verify_decode)
            keep = _usable_boxes(r.boxes_xywh, r.height, r.width)
            skipped += int((~keep).sum())
            records.append(ImageRecord(r.image_id, r.file_name, r.height, r.width, r.boxes_xywh[keep],
                                       r.category_ids[keep], r.iscrowd[keep], r.annotation_ids[keep]))
        if skipped:
            logger.warning("%s: skipped %d boxes with w or h <= 0, non-finite values or entirely outside their "
                           "image", self.split_root, skipped)
        return records, (f"{len(records)} images from {self.shot}-shot seed {self.seed} files of "
                         f"{len(self.class_names)} classes in {self.split_root}, {skipped} invalid boxes skipped")


def _voc_to_image_record(record: VocRecord, devkit: Path, class_names: Sequence[str], check_files: bool,
                         verify_decode: bool, xml_path: Path, class_ids: Sequence[int]) -> Tuple[ImageRecord, int]:
    """VocRecord (labels index ``class_names``, 0-based xyxy) -> ImageRecord (``class_ids[label]``, xywh); skipped
    count."""
    file_name = Path(record.file_name).relative_to(devkit).as_posix()
    if check_files:
        try:
            check_image_file(devkit, file_name, record.height, record.width, verify_decode)
        except CocoFormatError as err:
            raise VocFormatError(f"{xml_path}: {err}") from err
    xyxy = record.boxes.astype(np.float32).reshape(-1, 4)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    keep = _usable_boxes(xywh, record.height, record.width)
    ids = np.asarray([class_ids[k] for k in record.labels], np.int32).reshape(-1)
    n = int(keep.sum())
    return ImageRecord(voc_image_id(record.file_id), file_name, record.height, record.width, xywh[keep], ids[keep],
                       np.zeros(n, np.int32), np.arange(n, dtype=np.int64)), int((~keep).sum())


class VocSource(Source):
    """VOC-format image sets (``2007_trainval+2012_trainval``) with the objects of ``catalog``'s classes.

    An object named outside ``known_names`` (the dataset's whole class list, default ``catalog.names``) is an
    error naming the XML file and the name; objects of known classes outside the catalog are dropped.
    """

    kind = "voc"

    def __init__(self, name: str, devkit: Path, split_spec: str, catalog: Catalog, filter_empty: bool,
                 known_names: Optional[Sequence[str]] = None):
        super().__init__(name, devkit, catalog.ids, filter_empty)
        self.devkit, self.parts, self.class_names = Path(devkit), parse_split_spec(split_spec), catalog.names
        self.known_names = tuple(known_names or catalog.names)

    def _settings(self):
        return {"image_sets": [f"{year}_{image_set}" for year, image_set in self.parts],
                "class_names": list(self.class_names)}

    def _index_files(self):
        lists, xmls = [], []
        for year, image_set in self.parts:
            year_dir = self.devkit / f"VOC{year}"
            lists.append(year_dir / "ImageSets" / "Main" / f"{image_set}.txt")
            xmls += [year_dir / "Annotations" / f"{i}.xml" for i in read_image_set(year_dir, image_set)]
        missing = next((x for x in xmls if not x.is_file()), None)
        if missing is not None:
            raise VocFormatError(f"VOC annotation {missing} (listed in an ImageSets/Main list) does not exist")
        return lists, xmls

    def _read(self, check_files, verify_decode):
        records, skipped = [], 0
        for year, image_set in self.parts:
            for rec in load_voc_split(self.devkit, year, image_set, self.class_names, keep_difficult=True,
                                      known_names=self.known_names):
                record, bad = _voc_to_image_record(rec, self.devkit, self.class_names, check_files, verify_decode,
                                                   voc_annotation_path(self.devkit, rec.file_id), self.class_ids)
                records.append(record)
                skipped += bad
        return records, (f"{len(records)} images of {'+'.join(f'{y}_{s}' for y, s in self.parts)} in "
                         f"{self.devkit}, {skipped} invalid boxes skipped")


class VocFewShotSource(Source):
    """TFA-format VOC K-shot lists: one single-box record per instance, at most K per class (TFA ``meta_voc``)."""

    kind = "voc_few_shot"

    def __init__(self, name: str, split_root: Path, devkit: Path, class_names: Sequence[str], shot: int, seed: int,
                 filter_empty: bool):
        super().__init__(name, devkit, [voc_class_id(c) for c in class_names], filter_empty)
        self.split_root, self.devkit = Path(split_root), Path(devkit)
        self.class_names, self.shot, self.seed = tuple(class_names), int(shot), int(seed)

    def _settings(self):
        return {"shot": self.shot, "seed": self.seed}

    def _index_files(self):
        lists = [voc_split_file(self.split_root, c, self.shot, self.seed) for c in self.class_names]
        ids = {i for path in lists for i in read_voc_split_list(path)}
        xmls = [voc_annotation_path(self.devkit, i) for i in sorted(ids)]
        missing = next((x for x in xmls if not x.is_file()), None)
        if missing is not None:
            raise FewShotSplitError(f"VOC annotation {missing} (listed in a {self.shot}-shot seed {self.seed} file "
                                    f"under {self.split_root}) does not exist")
        return lists, xmls

    def _read(self, check_files, verify_decode):
        records, skipped = [], 0
        for rec in load_voc_few_shot(self.split_root, self.devkit, self.class_names, self.shot, self.seed):
            record, bad = _voc_to_image_record(rec, self.devkit, self.class_names, check_files, verify_decode,
                                               voc_annotation_path(self.devkit, rec.file_id), self.class_ids)
            records.append(record)
            skipped += bad
        return records, (f"{len(records)} instance records from {self.shot}-shot seed {self.seed} lists of "
                         f"{len(self.class_names)} classes in {self.split_root}, {skipped} invalid boxes skipped")


def build_source(root, data_cfg: dict, which: str) -> Source:
    """The source of ``which`` ("train" | "val") for a DeFRCN-family data config (module docstring).

    Set names: ``coco_{split}_{classes}``, ``coco_fewshot_{classes}_{K}shot_seed{S}``,
    ``voc_{split}_{classes}{voc_split}`` and ``voc_fewshot_{classes}{voc_split}_{K}shot_seed{S}``, with
    ``_nonempty`` appended when images without boxes are dropped (``+`` in VOC split names becomes ``-``).

    Raises:
        ValueError: ``which`` or a data key is invalid (names it).
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    dataset, classes = _dataset(data_cfg), class_set(data_cfg)
    catalog = build_catalog(data_cfg, root, which)
    split = str(data_cfg[f"{which}_split"])
    few_shot = which == "train" and is_few_shot(data_cfg) and bool(data_cfg["few_shot_root"])
    filter_empty = which == "train" and bool(data_cfg["filter_empty"])
    suffix = "_nonempty" if filter_empty else ""
    if few_shot:
        split_root = few_shot_root_path(root, data_cfg["few_shot_root"])
        shot, seed = int(data_cfg["shot"]), int(data_cfg["seed"])
        if dataset == "coco":
            _, images = coco_split_paths(root, split)
            return CocoFewShotSource(f"coco_fewshot_{classes}_{shot}shot_seed{seed}{suffix}", split_root, images,
                                     catalog.ids, shot, seed, filter_empty)
        name = f"voc_fewshot_{classes}{_voc_split(data_cfg)}_{shot}shot_seed{seed}{suffix}"
        return VocFewShotSource(name, split_root, Path(root), catalog.names, shot, seed, filter_empty)
    if dataset == "coco":
        ann, images = coco_split_paths(root, split)
        return CocoSource(f"coco_{split}_{classes}{suffix}", ann, images, catalog.ids, filter_empty)
    voc_set = _voc_split(data_cfg) if is_few_shot(data_cfg) else ""
    name = f"voc_{split}_{classes}{voc_set}{suffix}"
    return VocSource(name, Path(root), split, catalog, filter_empty, voc_class_names(data_cfg))


def coco_split_source(root, split: str) -> CocoSource:
    """The COCO-format split ``split`` under ``root`` with every class of its file and every image (no filtering).

    It is the source ``build_source`` gives for evaluating ``split`` with a COCO ``classes: all`` config, so it
    shares that MindRecord set, named ``coco_{split}_all`` (``tools/coco_to_mindrecord.py --split``).

    Args:
        root: COCO-format root (``annotations/instances_{split}.json`` and ``{split}/``, or a TFA 2014 name).
        split: e.g. ``val2017``.

    Raises:
        src.data.catalog.CatalogError: a missing or malformed annotation file, or an empty or duplicate
            category list (the message names the file).
    """
    return build_source(root, {"dataset": "coco", "protocol": "standard", "val_split": split}, "val")


def load_source(root, data_cfg: dict, which: str, check_files: bool = True,
                verify_decode: bool = False) -> SourceData:
    """``build_source(root, data_cfg, which).load(check_files, verify_decode)``: the records of a split.

    The PCB support set (the few-shot training set at original resolution) and tools read records this way.
    """
    return build_source(root, data_cfg, which).load(check_files, verify_decode)


def voc_eval_records(root, data_cfg: dict) -> List[VocRecord]:
    """Ground truth of ``val_split`` for ``src.evaluation.voc_evaluator.VocEvaluator``.

    Records of every listed image (none dropped), objects of the detector classes only, labels indexing
    the catalog's names (:func:`src.data.catalog.build_catalog`), difficult objects kept and flagged.

    Raises:
        VocFormatError: a missing list or annotation, or a malformed one.
    """
    names = build_catalog(data_cfg, root, "val").names
    return [rec for year, image_set in parse_split_spec(data_cfg["val_split"])
            for rec in load_voc_split(Path(root), year, image_set, names, keep_difficult=True,
                                      known_names=voc_class_names(data_cfg))]
