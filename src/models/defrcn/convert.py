"""Convert DeFRCN weights from PyTorch / Caffe2 files into MindSpore checkpoints.

Three source layouts (``kind``) are understood:

* ``"defrcn"``: a detectron2 / er-muyue/DeFRCN training checkpoint (``torch.save`` of a dict whose ``"model"``
  entry is the state dict; ``optimizer``, ``scheduler`` and ``iteration`` are ignored). The DeFRCN Cell uses
  detectron2's key names, so every key passes through
  :func:`src.models.defrcn.backbone.d2_to_mindspore_name` unchanged and only shapes are checked. A checkpoint
  produced by DeFRCN's ``tools/model_surgery.py --method remove`` has no box predictor; when all four
  ``roi_heads.box_predictor.*`` tensors are absent they are reported as missing by design (fine-tuning
  initialises that head), any other absence is an error. detectron2 v0.3 also saves the RPN's anchor
  template as the buffer ``proposal_generator.anchor_generator.cell_anchors.0`` ([15, 4] xyxy); the DeFRCN Cell
  builds it from its configuration (:func:`src.ops.anchors.cell_anchors`), so the stored value must equal
  that one within 1e-4 px and is then dropped (reported under ``dropped``); a different value is refused with
  both shown (the checkpoint was trained with other anchors).
* ``"resnet_c2"``: the MSRA Caffe2 ImageNet pickle (``R-101.pkl``: a dict with ``blobs``, or the blob dict
  itself) that DeFRCN starts base training from. Blob names go through
  :func:`src.models.defrcn.backbone.c2_to_d2_name` (detectron2 ``checkpoint/c2_model_loading.py`` renaming, res5
  placed under ``roi_heads.``) and then :func:`~src.models.defrcn.backbone.d2_to_mindspore_name`. The pickle's
  batch norms are affine only (``_bn_s`` scale, ``_bn_b`` shift, no statistics). DeFRCN's own
  ``DetectionCheckpointer`` copies the blobs into the model's state dict in place, so the statistics keep
  the values detectron2's ``FrozenBatchNorm2d`` is constructed with, mean 0 and variance ``1 - eps``, and
  the version stamp of that state dict stops the old "subtract eps" upgrade; in the forward pass
  ``rsqrt(var + eps)`` is then exactly 1 and each norm is ``x * s + b``. This converter writes the same two
  values (``eps`` read from each FrozenBN of the model). (Later detectron2 releases build a fresh dict instead,
  so the variance loads as 1 and the scale becomes ``s / sqrt(1 + eps)``, 5e-6 smaller; DeFRCN is followed.)
  Only the backbone and res5 are written: the RPN, the box predictor and the two affine (GDL) layers have no
  ImageNet counterpart and are reported as missing by design. The ImageNet classifier (``fc1000_*``,
  ``pred_*``) and optimizer momenta (``*_momentum``, which DeFRCN's loader drops too) are dropped by name.
* ``"resnet_torchvision"``: torchvision's ``resnet101`` state dict (``resnet101-5d3b4d8f.pth``), the ImageNet
  classifier behind DeFRCN's Prototypical Calibration Block, into
  :class:`src.models.defrcn.pcb.PCBFeatureExtractor`: every key gets the ``net.`` prefix (the FrozenBN keeps
  torch's ``weight/bias/running_mean/running_var`` names and eval-mode BatchNorm computes the same thing);
  ``num_batches_tracked`` is BatchNorm bookkeeping and is dropped. As in DeFRCN's strict ``load_state_dict``,
  the ``fc`` layer is required (its 1000 logits are the PCB feature).

Every layout is converted strictly: a source key that maps to no parameter, a parameter left without a value
(beyond the by-design sets above) or a shape mismatch is collected, and :class:`ConversionError` names each
of them; nothing is written then. Otherwise the checkpoint is saved under a temporary name and renamed into
place, so no partial file ever exists under ``output``. Reading the ``.pth`` sources, the strict check and the
atomic write are the shared ones of :mod:`src.convert_common`, and so is :class:`ConversionError` (the error
``tools/convert_weights.py`` reports). Layouts agree between torch and MindSpore here (conv ``[out, in, kh, kw]``,
dense ``[out, in]``), so no tensor is transposed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from src.convert_common import (
    IGNORED_SUFFIXES,
    ConversionError,
    assemble_params,
    cell_param_shapes,
    load_torch_state_dict,
    save_checkpoint_atomic,
    verify_buffers,
)
from src.layers.frozen_bn import FrozenBatchNorm2d
from src.models.defrcn.backbone import RESNET_DEPTHS, c2_to_d2_name, d2_to_mindspore_name
from src.ops.anchors import cell_anchors

KINDS = ("defrcn", "resnet_c2", "resnet_torchvision")
BOX_PREDICTOR_KEYS = tuple(f"roi_heads.box_predictor.{layer}.{leaf}" for layer in ("cls_score", "bbox_pred")
                           for leaf in ("weight", "bias"))
# Parts of the DeFRCN model that an ImageNet backbone cannot initialise; detectron2 leaves them at their init.
C2_UNINITIALISED_PREFIXES = ("proposal_generator.", "roi_heads.box_predictor.", "affine_rpn.", "affine_rcnn.")
# detectron2 v0.3 DefaultAnchorGenerator's persistent buffer (one feature level in the C4 model).
ANCHOR_BUFFER = "proposal_generator.anchor_generator.cell_anchors.0"


def _depths(depth) -> Tuple[int, int, int, int]:
    if isinstance(depth, int):
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; supported: {sorted(RESNET_DEPTHS)}")
        return RESNET_DEPTHS[depth]
    return tuple(int(d) for d in depth)


def load_c2_blobs(path) -> Dict[str, np.ndarray]:
    """Read a Caffe2 / Detectron ``.pkl`` (``{"blobs": {...}, ...}`` or the blob dict) as name -> array.

    Top-level entries beside ``blobs`` (e.g. ``__author__``) are metadata and ignored.

    Raises:
        ConversionError: missing or unreadable file, or a blob that is not an array.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"source not found: {path}")
    try:
        with open(path, "rb") as f:
            # The Detectron pickles were written by Python 2; latin1 keeps their numpy byte buffers intact.
            data = pickle.load(f, encoding="latin1")
    except Exception as err:  # unpickling a wrong file can raise nearly anything
        raise ConversionError(f"{path}: cannot read as a Caffe2 pickle: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a dict of blobs, got {type(data).__name__}")
    blobs = data["blobs"] if "blobs" in data else {k: v for k, v in data.items() if not str(k).startswith("__")}
    bad = sorted(str(k) for k, v in blobs.items() if not isinstance(v, np.ndarray))
    if bad:
        raise ConversionError(f"{path}: blobs that are not arrays: {bad}")
    return {str(k): v for k, v in blobs.items()}


def defrcn_param_shapes(num_classes: int, depth=101) -> Tuple[Dict[str, tuple], Dict[str, float]]:
    """Parameter shapes of the DeFRCN Cell and the ``eps`` of each FrozenBN, by parameter-name prefix.

    Returns:
        (name -> shape, FrozenBN cell name -> eps).
    """
    from mindspore.nn.utils import no_init_parameters

    from src.models.defrcn.model import DeFRCN

    # Only names and shapes are needed; skipping the initialisers keeps R-101 cheap to enumerate.
    with no_init_parameters():
        model = DeFRCN(num_classes=num_classes, depth=_depths(depth))
    shapes = cell_param_shapes(model)
    eps = {name: float(cell.eps) for name, cell in model.cells_and_names() if isinstance(cell, FrozenBatchNorm2d)}
    return shapes, eps


def pcb_param_shapes(depth=101, num_logits: int = 1000) -> Dict[str, tuple]:
    """Parameter shapes of :class:`src.models.defrcn.pcb.PCBFeatureExtractor` (name -> shape)."""
    from mindspore.nn.utils import no_init_parameters

    from src.models.defrcn.pcb import PCBFeatureExtractor

    with no_init_parameters():
        extractor = PCBFeatureExtractor(num_logits=num_logits, depths=_depths(depth))
    return cell_param_shapes(extractor)


def _d2_name(key: str):
    try:
        return d2_to_mindspore_name(key)
    except ValueError:
        return None


def _c2_name(blob: str):
    try:
        d2_key = c2_to_d2_name(blob)
    except ValueError:
        return None
    return None if d2_key is None else _d2_name(d2_key)


def map_defrcn_state(state: Dict[str, np.ndarray], shapes: Dict[str, tuple]):
    """A detectron2 / DeFRCN state dict onto the DeFRCN Cell (see the module docstring).

    The anchor buffer is compared with DeFRCN's default anchors (sizes 32-512, ratios 0.5/1/2), the ones
    :func:`defrcn_param_shapes`'s model builds.

    Returns:
        (params name -> float32 array, missing_by_design list of names, dropped list of verified buffer keys).

    Raises:
        ConversionError: unmapped, missing or misshaped keys, or an anchor buffer other than the model's
            (both values shown).
    """
    dropped, problems = verify_buffers(state, {ANCHOR_BUFFER: cell_anchors().astype(np.float64)})
    exempt = list(BOX_PREDICTOR_KEYS) if not any(k in state for k in BOX_PREDICTOR_KEYS) else []
    kept = ((k, _d2_name(k), v) for k, v in state.items() if k not in dropped)
    params = assemble_params(kept, shapes, problems=problems, exempt=exempt)
    return params, exempt, dropped


def map_c2_blobs(blobs: Dict[str, np.ndarray], shapes: Dict[str, tuple], bn_eps: Dict[str, float]):
    """MSRA Caffe2 ResNet blobs onto the DeFRCN backbone and res5 (see the module docstring).

    Returns:
        (params, report) where report has ``dropped`` (blob names), ``filled`` (FrozenBN statistics set to
        mean 0 / variance ``1 - eps``) and ``missing_by_design`` (parameter names left out of the output).

    Raises:
        ConversionError: unmapped, missing or misshaped blobs.
    """
    dropped = sorted(k for k in blobs if k.startswith(("fc1000_", "pred_")) or k.endswith("_momentum"))
    skip = set(dropped)
    kept = [(k, _c2_name(k), v) for k, v in blobs.items() if k not in skip]
    filled = {}
    for cell_name, eps in bn_eps.items():
        mean, var = f"{cell_name}.running_mean", f"{cell_name}.running_var"
        if mean in shapes and not cell_name.startswith(C2_UNINITIALISED_PREFIXES):
            filled[mean] = np.zeros(shapes[mean], np.float32)
            filled[var] = np.full(shapes[var], 1.0 - eps, np.float32)
    by_design = sorted(n for n in shapes if n.startswith(C2_UNINITIALISED_PREFIXES))
    params = assemble_params(kept, {n: s for n, s in shapes.items() if n not in filled}, exempt=by_design)
    params.update(filled)
    return params, {"dropped": dropped, "filled": sorted(filled), "missing_by_design": by_design}


def map_torchvision_state(state: Dict[str, np.ndarray], shapes: Dict[str, tuple]):
    """A torchvision ResNet state dict onto the PCB extractor (``net.`` prefix, ``num_batches_tracked`` dropped).

    Returns:
        (params, dropped source keys).

    Raises:
        ConversionError: unmapped, missing or misshaped keys.
    """
    dropped = sorted(k for k in state if k.endswith(IGNORED_SUFFIXES))
    skip = set(dropped)
    kept = ((k, "net." + k, v) for k, v in state.items() if k not in skip)
    return assemble_params(kept, shapes), dropped


def convert_defrcn_checkpoint(source, output, kind: str, num_classes: int | None = None, depth=101) -> dict:
    """Convert a DeFRCN, MSRA Caffe2 or torchvision source into a MindSpore checkpoint (module docstring).

    Args:
        source: ``.pth`` (``defrcn``, ``resnet_torchvision``) or ``.pkl`` (``resnet_c2``) path.
        output: destination ``.ckpt``; written only when the conversion is complete.
        kind: one of :data:`KINDS`.
        num_classes: foreground classes of the DeFRCN model (``defrcn`` only). ``None`` takes it from the
            source's ``cls_score`` (rows - 1); ignored by the other kinds, which leave the predictor out.
        depth: ResNet depth, 50 or 101 (DeFRCN and its PCB use 101), or four blocks-per-stage counts.

    Returns:
        dict with ``kind``, ``num_source_keys``, ``num_written``, ``num_model_params``, ``dropped`` (source
        keys dropped by name), ``filled`` (parameters written with fixed values), ``missing_by_design``
        (model parameters deliberately not written) and ``num_classes``.

    Raises:
        ValueError: unknown ``kind`` or depth.
        ConversionError: unreadable source, or keys that are unmapped, missing or misshaped (each named);
            ``output`` is then left untouched.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")
    report = {"dropped": [], "filled": [], "missing_by_design": [], "num_classes": None}
    if kind == "defrcn":
        state = load_torch_state_dict(source)
        cls_score = state.get("roi_heads.box_predictor.cls_score.weight")
        if num_classes is None and cls_score is not None:
            num_classes = int(cls_score.shape[0]) - 1
        # Without a predictor in the source the class count does not affect any written tensor.
        shapes, _ = defrcn_param_shapes(num_classes or 1, depth)
        params, report["missing_by_design"], report["dropped"] = map_defrcn_state(state, shapes)
        report["num_classes"] = num_classes
    elif kind == "resnet_c2":
        state = load_c2_blobs(source)
        shapes, eps = defrcn_param_shapes(1, depth)
        params, extra = map_c2_blobs(state, shapes, eps)
        report.update(extra)
    else:
        state = load_torch_state_dict(source)
        shapes = pcb_param_shapes(depth)
        params, report["dropped"] = map_torchvision_state(state, shapes)
    save_checkpoint_atomic(params, output)
    report.update(kind=kind, num_source_keys=len(state), num_written=len(params), num_model_params=len(shapes))
    return report
