"""The class catalog: the one table of a dataset's classes, their dataset ids and each model's training labels.

A :class:`Catalog` lists the classes a detector predicts, in its contiguous label order, with the dataset
category id and name of each. Models, evaluators and ``infer.py`` read classes from it; no other class table
exists outside ``src/data``.

Where it comes from (:func:`build_catalog`):

* a COCO-format dataset: the ``categories`` of its annotation file, ascending id order (for COCO 2017 the 80
  classes, ids 1..90 sparse). Any ids and names are accepted; ids may collide with COCO's and mean other things.
* a VOC-format dataset: ``data.class_names`` (default the 20 Pascal VOC classes), class ``k`` has id ``k + 1``.
* the DeFRCN few-shot class sets (``data.protocol: few_shot``, then ``data.classes``: base | novel, or ``all`` of a
  VOC split): the TFA tables of ``src.data.sources``.

Training labels per model family (:meth:`Catalog.num_classes`): DETR keeps id-indexed labels (label = dataset id,
``num_classes = max id + 1``; the 91-way COCO head of the released weights still loads, ids that are no class are
never a target); Focus-DETR and DeFRCN use contiguous labels ``0..K-1`` (``num_classes = K``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from src.errors import InputError

PROTOCOLS = ("standard", "few_shot")
"""``data.protocol``: ``standard`` (the dataset's own classes) | ``few_shot`` (DeFRCN/TFA class sets: ``data.classes``,
``data.voc_split``, ``data.few_shot_root``; base / novel metrics)."""

ID_INDEXED_MODELS = ("detr",)
"""Model families whose class index is the dataset category id (softmax head of ``max id + 1`` classes)."""


class CatalogError(InputError, ValueError):
    """A class list that cannot be used: empty, duplicate names or ids, ids < 1; the message names the source."""


@dataclass(frozen=True)
class Catalog:
    """Classes of a dataset in the detector's contiguous label order.

    Attributes:
        ids: dataset category id of contiguous label ``k`` (ints >= 1, unique).
        names: class name of label ``k`` (non-empty, unique).
        source: where the list came from (a file or a config key), for messages.

    Raises:
        CatalogError: empty list, ids and names of different lengths, an id < 1 or not an int, a duplicate id or
            name, an empty name (each names ``source`` and the offending id or name).
    """

    ids: Tuple[int, ...]
    names: Tuple[str, ...]
    source: str = "catalog"

    def __post_init__(self):
        if not self.ids:
            raise CatalogError(f"{self.source}: the class list is empty; a detector needs at least one class")
        if len(self.ids) != len(self.names):
            raise CatalogError(f"{self.source}: {len(self.ids)} class ids but {len(self.names)} names")
        bad = [i for i in self.ids if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1]
        if bad:
            raise CatalogError(f"{self.source}: category ids must be integers >= 1 (0 is DETR's padding label), "
                               f"got {bad}")
        for kind, values in (("category id", self.ids), ("class name", self.names)):
            seen = set()
            for value in values:
                if value in seen:
                    raise CatalogError(f"{self.source}: duplicate {kind} {value!r}")
                seen.add(value)
        empty = [i for i, name in zip(self.ids, self.names) if not str(name).strip()]
        if empty:
            raise CatalogError(f"{self.source}: category ids {empty} have an empty name")
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @classmethod
    def from_coco_json(cls, path) -> Catalog:
        """The ``categories`` of a COCO instances file, ascending id order.

        Raises:
            CatalogError: as the class; also a missing, unreadable or malformed file or category entry (named).
        """
        from src.data.coco import CocoFormatError, load_categories

        try:
            categories = load_categories(path)
        except CocoFormatError as err:
            raise CatalogError(str(err)) from err
        ids = tuple(sorted(categories))
        return cls(ids, tuple(categories[i] for i in ids), str(path))

    @classmethod
    def from_names(cls, names: Sequence[str], source: str) -> Catalog:
        """A class list whose ``k``-th class has id ``k + 1`` (VOC-format datasets)."""
        if isinstance(names, str) or names is None:
            raise CatalogError(f"{source}: must be a list of class names, got {names!r}")
        return cls(tuple(range(1, len(names) + 1)), tuple(names), source)

    def __len__(self) -> int:
        return len(self.ids)

    def num_classes(self, model_name: str) -> int:
        """Classes of ``model_name``'s head: ``max id + 1`` for id-indexed families (DETR), else ``len``."""
        return max(self.ids) + 1 if model_name in ID_INDEXED_MODELS else len(self.ids)

    def id_to_name(self) -> Dict[int, str]:
        """dataset category id -> name."""
        return dict(zip(self.ids, self.names))

    def name_of(self, category_id: int) -> str:
        """Name of a dataset category id.

        Raises:
            CatalogError: the id is not in the catalog (names the id and the source).
        """
        names = self.id_to_name()
        if int(category_id) not in names:
            raise CatalogError(f"{self.source}: category id {int(category_id)} is not among ids {list(self.ids)}")
        return names[int(category_id)]

    def id_to_label_table(self) -> np.ndarray:
        """int32 ``[max id + 1]``: contiguous label of each dataset id; ids that are no class map to 0."""
        table = np.zeros(max(self.ids) + 1, np.int32)
        table[list(self.ids)] = np.arange(len(self.ids), dtype=np.int32)
        return table

    def to_json(self) -> str:
        """``[{"id": .., "name": ..}, ...]`` in label order (COCO ``categories`` style), for checkpoints."""
        return json.dumps([{"id": i, "name": n} for i, n in zip(self.ids, self.names)])

    @classmethod
    def from_json(cls, text: str, source: str) -> Catalog:
        """Inverse of :meth:`to_json`.

        Raises:
            CatalogError: not such a list (names ``source``).
        """
        try:
            entries = json.loads(text)
            return cls(tuple(e["id"] for e in entries), tuple(e["name"] for e in entries), source)
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise CatalogError(f"{source}: malformed class list {text[:80]!r}: {err}") from err


def coco_catalog() -> Catalog:
    """The 80 COCO 2017 classes (what converted COCO checkpoints predict)."""
    from src.data.coco_classes import COCO_CATEGORY_NAMES

    ids = tuple(sorted(COCO_CATEGORY_NAMES))
    return Catalog(ids, tuple(COCO_CATEGORY_NAMES[i] for i in ids), "COCO 2017 categories")


def voc_class_names(data_cfg: dict) -> Tuple[str, ...]:
    """``data.class_names`` of a VOC-format dataset (default the 20 Pascal VOC classes, ``src.data.voc``)."""
    from src.data.voc import VOC_CLASSES

    names = data_cfg["class_names"]
    return tuple(VOC_CLASSES) if names is None else Catalog.from_names(names, "data.class_names").names


def is_few_shot(data_cfg: dict) -> bool:
    """True when ``data.protocol`` is ``few_shot`` (the DeFRCN/TFA class sets), False for ``standard``.

    Raises:
        ValueError: ``data.protocol`` is not one of :data:`PROTOCOLS`.
    """
    protocol = data_cfg["protocol"]
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol == "few_shot"


def build_catalog(data_cfg: dict, root=None, which: str = "train") -> Catalog:
    """The catalog of a data config (see the module docstring).

    Args:
        data_cfg: the ``data`` config section (``dataset``, ``protocol``, ``class_names``; for ``few_shot``
            also ``classes``, ``voc_split``, ``few_shot_root``).
        root: dataset root; needed for a COCO-format dataset with ``classes: all`` (its categories are read from
            the annotation file of ``data.{which}_split``). Without it, COCO's own 80 classes are assumed.
        which: "train" or "val": whose annotation file names the classes.

    Raises:
        CatalogError: an empty or duplicate class list, an unreadable annotation file (named).
        ValueError: an unknown ``data.dataset``, ``data.protocol``, ``data.classes`` or ``data.voc_split``.
    """
    from src.data.sources import class_set, coco_split_paths, detector_class_ids, detector_class_names

    dataset, classes = data_cfg["dataset"], class_set(data_cfg)
    if dataset == "voc":
        names = voc_class_names(data_cfg)
        if classes == "all" and (data_cfg["class_names"] is not None or not is_few_shot(data_cfg)):
            return Catalog.from_names(names, "data.class_names")
        position = {n: k + 1 for k, n in enumerate(names)}
        chosen = detector_class_names(data_cfg)
        return Catalog(tuple(position[n] for n in chosen), tuple(chosen), f"VOC classes {classes}")
    few_shot = which == "train" and is_few_shot(data_cfg) and bool(data_cfg["few_shot_root"])
    if dataset == "coco" and classes == "all" and root is not None and not few_shot:
        return Catalog.from_coco_json(coco_split_paths(root, str(data_cfg[f"{which}_split"]))[0])
    if not is_few_shot(data_cfg):
        coco = coco_catalog()
        return Catalog(coco.ids, coco.names, "COCO classes all")
    ids, names = detector_class_ids(data_cfg), detector_class_names(data_cfg)
    return Catalog(tuple(ids), tuple(names), f"COCO classes {classes}")


def resolve_num_classes(cfg: dict, catalog: Catalog | None = None) -> dict:
    """``cfg`` with ``model.num_classes`` set from ``catalog`` where it is null (returns a new dict).

    ``catalog`` defaults to the config's classes without reading the dataset (``build_catalog(cfg["data"])``:
    COCO's 80 for COCO configs, so DETR gets 91 and Focus-DETR 80). DeFRCN has no ``num_classes`` key (its head
    follows the catalog directly).
    """
    model = cfg["model"]
    if "num_classes" not in model or model["num_classes"] is not None:
        return cfg
    catalog = catalog if catalog is not None else build_catalog(cfg["data"])
    return {**cfg, "model": {**model, "num_classes": catalog.num_classes(model["name"])}}
