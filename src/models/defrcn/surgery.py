"""Box-predictor surgery between DeFRCN base training and few-shot fine-tuning.

Follows er-muyue/DeFRCN ``tools/model_surgery.py`` (itself TFA's ``tools/ckpt_surgery.py`` without
``combine``):

* ``remove`` (FSOD: the head is re-learned on the novel classes only) deletes the four predictor tensors
  ``roi_heads.box_predictor.cls_score.{weight,bias}`` and ``roi_heads.box_predictor.bbox_pred.{weight,bias}``.
* ``randinit`` (gFSOD: all classes) builds an all-class predictor: ``cls_score`` [C_all + 1, D] and
  ``bbox_pred`` [4 * C_all, D] with random weights and zero biases, then copies each base class's row (and
  its 4-row block of ``bbox_pred``) from its base-training index to its index in the all-class order, and the
  background row (last, detectron2 convention) to the new last row.

Class orders come from ``src/data/few_shot.py``: the base detector's classes are ``COCO_BASE_CLASSES`` (60, in
COCO id order) or ``VOC_BASE_CLASSES[split]`` (15); the all-class detector's are ``COCO_ALL_CLASSES`` (80, in
COCO id order, so base rows move: "truck", base index 0, becomes index 7) or ``VOC_ALL_CLASSES[split]`` (base
first, so VOC base rows keep their indices; the split still decides which classes those are).

Checkpoints are MindSpore ``.ckpt`` files whose predictor tensors use DeFRCN's names (the MindSpore DeFRCN
model keeps detectron2's parameter names; ``nn.Dense`` weights are [out, in] like ``nn.Linear``). As in the
reference, optimizer state and training progress are dropped: the output holds only the model weights (a
checkpoint written by ``src/checkpoint.py`` lists its optimizer entries in ``optimizer_state_keys``).

Random init: new rows are drawn normal with std 0.01 for both ``cls_score`` and ``bbox_pred``, as DeFRCN's
surgery script does (``torch.nn.init.normal_(new_weight, 0, 0.01)`` for every weight; not the 0.001 that
``FastRCNNOutputLayers`` uses for a freshly built ``bbox_pred``); new biases are zero.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter

from src.checkpoint import META_EPOCH, META_EXTRA_KEYS, META_OPTIMIZER_KEYS, META_STEP
from src.data.few_shot import COCO_ALL_CLASSES, COCO_BASE_CLASSES, VOC_ALL_CLASSES, VOC_BASE_CLASSES
from src.errors import InputError
from src.fileio import atomic_output

PREDICTOR = "roi_heads.box_predictor"
CLS_WEIGHT = f"{PREDICTOR}.cls_score.weight"
CLS_BIAS = f"{PREDICTOR}.cls_score.bias"
BOX_WEIGHT = f"{PREDICTOR}.bbox_pred.weight"
BOX_BIAS = f"{PREDICTOR}.bbox_pred.bias"
PREDICTOR_KEYS = (CLS_WEIGHT, CLS_BIAS, BOX_WEIGHT, BOX_BIAS)
CLS_INIT_STD = 0.01
BOX_INIT_STD = 0.01


class SurgeryError(InputError, ValueError):
    """The source checkpoint cannot undergo the requested surgery (missing key, wrong shape, bad option)."""


def class_orders(dataset: str, split: int | None = None) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(base classes, all classes) in detector index order for ``dataset`` (``"coco"``/``"voc"``).

    Raises:
        SurgeryError: unknown dataset, or a VOC split other than 1, 2, 3.
    """
    if dataset == "coco":
        return COCO_BASE_CLASSES, COCO_ALL_CLASSES
    if dataset == "voc":
        if split not in VOC_ALL_CLASSES:
            raise SurgeryError(f"VOC surgery needs split 1, 2 or 3, got {split!r}")
        return VOC_BASE_CLASSES[split], VOC_ALL_CLASSES[split]
    raise SurgeryError(f"dataset must be 'coco' or 'voc', got {dataset!r}")


def base_to_all_index(base_classes: Sequence[str], all_classes: Sequence[str]) -> np.ndarray:
    """int64 [C_base]: entry i is the all-class index of base class i (by name)."""
    position = {name: i for i, name in enumerate(all_classes)}
    missing = [name for name in base_classes if name not in position]
    if missing:
        raise SurgeryError(f"base classes {missing} are not in the all-class list")
    return np.asarray([position[name] for name in base_classes], np.int64)


def _require(weights: Dict[str, np.ndarray], source: str) -> None:
    for key in PREDICTOR_KEYS:
        if key not in weights:
            raise SurgeryError(f"{source} has no '{key}' (expected the box predictor tensors {list(PREDICTOR_KEYS)})")


def remove_predictor(weights: Dict[str, np.ndarray], source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """``weights`` without the four box-predictor tensors (DeFRCN ``--method remove``).

    Raises:
        SurgeryError: a predictor tensor is missing (named).
    """
    _require(weights, source)
    return {name: value for name, value in weights.items() if name not in PREDICTOR_KEYS}


def randinit_predictor(weights: Dict[str, np.ndarray], base_classes: Sequence[str], all_classes: Sequence[str],
                       seed: int = 0, source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """``weights`` with an all-class predictor holding the base rows at their new indices (``randinit``).

    Args:
        weights: name -> array; ``cls_score.weight`` [C_base + 1, D] (background last), ``cls_score.bias``
            [C_base + 1], ``bbox_pred.weight`` [4 * C_base, D] (class-specific, 4 rows per class in
            (dx, dy, dw, dh) order), ``bbox_pred.bias`` [4 * C_base].
        base_classes: the source detector's classes in index order (C_base names).
        all_classes: the target detector's classes in index order (C_all names, a superset).
        seed: seed of the NumPy generator drawing the new rows.
        source: name used in error messages.

    Returns:
        A new dict; the predictor tensors have shapes [C_all + 1, D], [C_all + 1], [4 * C_all, D], [4 * C_all]
        and the source dtypes; every other entry is passed through.

    Raises:
        SurgeryError: a missing predictor tensor or shapes that do not fit ``base_classes``.
    """
    _require(weights, source)
    num_base, num_all = len(base_classes), len(all_classes)
    cls_w, cls_b = np.asarray(weights[CLS_WEIGHT]), np.asarray(weights[CLS_BIAS])
    box_w, box_b = np.asarray(weights[BOX_WEIGHT]), np.asarray(weights[BOX_BIAS])
    dim = cls_w.shape[-1]
    expected = {CLS_WEIGHT: (num_base + 1, dim), CLS_BIAS: (num_base + 1,), BOX_WEIGHT: (4 * num_base, dim),
                BOX_BIAS: (4 * num_base,)}
    for key, array in zip(PREDICTOR_KEYS, (cls_w, cls_b, box_w, box_b)):
        if array.shape != expected[key]:
            raise SurgeryError(f"{source}: '{key}' has shape {array.shape}, expected {expected[key]} for "
                               f"{num_base} base classes plus background")
    new_index = base_to_all_index(base_classes, all_classes)
    rng = np.random.default_rng(seed)
    new_cls_w = rng.normal(0.0, CLS_INIT_STD, (num_all + 1, dim)).astype(cls_w.dtype)
    new_box_w = rng.normal(0.0, BOX_INIT_STD, (4 * num_all, dim)).astype(box_w.dtype)
    new_cls_b = np.zeros(num_all + 1, cls_b.dtype)
    new_box_b = np.zeros(4 * num_all, box_b.dtype)
    new_cls_w[new_index] = cls_w[:num_base]
    new_cls_b[new_index] = cls_b[:num_base]
    new_cls_w[num_all] = cls_w[num_base]
    new_cls_b[num_all] = cls_b[num_base]
    # Row r of class k's regression block sits at 4k + r in both layouts; move the block as a whole.
    block_rows = (4 * new_index[:, None] + np.arange(4)).reshape(-1)
    new_box_w[block_rows] = box_w
    new_box_b[block_rows] = box_b
    out = dict(weights)
    out.update({CLS_WEIGHT: new_cls_w, CLS_BIAS: new_cls_b, BOX_WEIGHT: new_box_w, BOX_BIAS: new_box_b})
    return out


def read_weights(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Model weights of a MindSpore checkpoint as arrays, without optimizer state and metadata.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    values = ms.load_checkpoint(str(path))
    # epoch/step are stored as one-element tensors; the surgery resets progress like DeFRCN (iteration 0).
    dropped = {META_EPOCH, META_STEP}
    for listing in (META_OPTIMIZER_KEYS, META_EXTRA_KEYS):
        names = values.get(listing)
        if isinstance(names, str) and names:
            dropped |= set(names.split("\n"))
    return {name: value.asnumpy() for name, value in values.items()
            if isinstance(value, Parameter) and name not in dropped}


def write_weights(path: str | os.PathLike, weights: Dict[str, np.ndarray]) -> Path:
    """Atomically write ``weights`` as a MindSpore ``.ckpt`` (parameter order preserved)."""
    path = Path(path)
    if path.suffix != ".ckpt":
        raise SurgeryError(f"output must end with '.ckpt' (MindSpore appends it otherwise), got {path}")
    save_list = [{"name": name, "data": ms.Tensor(value)} for name, value in weights.items()]
    with atomic_output(path, suffix=".ckpt") as tmp:
        ms.save_checkpoint(save_list, str(tmp))
    return path


def model_surgery(method: str, src: str | os.PathLike, output: str | os.PathLike, dataset: str,
                  split: int | None = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """Run ``remove`` or ``randinit`` on checkpoint ``src`` and write ``output``; returns the written weights.

    Nothing is written unless the whole surgery succeeds.

    Raises:
        SurgeryError: unknown method or dataset, a missing or misshapen predictor tensor.
        FileNotFoundError: missing source.
    """
    if method not in ("remove", "randinit"):
        raise SurgeryError(f"method must be 'remove' or 'randinit', got {method!r}")
    base_classes, all_classes = class_orders(dataset, split)
    weights = read_weights(src)
    if method == "remove":
        result = remove_predictor(weights, source=str(src))
    else:
        result = randinit_predictor(weights, base_classes, all_classes, seed=seed, source=str(src))
    write_weights(output, result)
    return result
