"""Atomic training checkpoints (network + optimizer state + epoch/step) and strict pretrained loading.

A training checkpoint is ONE MindSpore ``.ckpt`` holding, by parameter name:

* every network parameter, trainable or not (frozen BatchNorm statistics included);
* every optimizer state parameter that is not a network parameter (for :class:`DetrAdamW`:
  ``exp_avg.<name>``, ``exp_avg_sq.<name>`` (plus ``max_exp_avg_sq.<name>`` only with AMSGrad) and the
  update counter ``state_step``, which also drives the learning-rate schedule);
* ``append_dict`` metadata: ``epoch`` and ``step`` (int64), the caller's ``extra`` entries, and
  ``optimizer_state_keys`` / ``extra_keys`` (newline-joined names of the optimizer and extra entries) so
  that :func:`load_pretrained` can tell them from unexpected weights.

Saving writes a temporary file in the destination directory and renames it over the destination with
``os.replace`` (atomic on POSIX within one filesystem), so a crash or an exception mid-save never leaves a
truncated checkpoint under the final name, and the temporary file is removed on failure. This follows the
DESIGN runtime convention; facebookresearch/detr saves ``model``/``optimizer``/``lr_scheduler``/``epoch``
into one ``checkpoint.pth`` in the same spirit (non-atomically).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn

from src.checkpoint_kind import SHOWN_KEYS, mismatch_message, some_keys
from src.data.catalog import Catalog
from src.errors import InputError
from src.fileio import atomic_output

logger = logging.getLogger(__name__)


class CheckpointNotFoundError(InputError, FileNotFoundError):
    """A checkpoint path that does not exist (the message names it)."""


class CheckpointMismatchError(InputError, KeyError):
    """A checkpoint whose keys do not fit the model; the message says which model it belongs to."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointShapeError(InputError, ValueError):
    """A checkpoint whose tensors have other shapes than the model's (a few keys named, with both shapes)."""


class CheckpointFormatError(InputError, ValueError):
    """A file MindSpore cannot read as a checkpoint (a PyTorch file is recognised and named)."""

META_EPOCH = "epoch"
META_STEP = "step"
META_OPTIMIZER_KEYS = "optimizer_state_keys"
META_EXTRA_KEYS = "extra_keys"
_RESERVED_META = (META_EPOCH, META_STEP, META_OPTIMIZER_KEYS, META_EXTRA_KEYS)
_CKPT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")


def checkpoint_path(directory: str | os.PathLike, prefix: str, epoch: int, step: int) -> Path:
    """``<directory>/<prefix>-<epoch>_<step>.ckpt`` (MindSpore ModelCheckpoint naming; used for rotation)."""
    return Path(directory) / f"{prefix}-{int(epoch)}_{int(step)}.ckpt"


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The ``<prefix>-<epoch>_<step>.ckpt`` with the most steps under ``directory`` (recursively), or None.

    Hidden files (``atomic_output``'s temporaries, left only by a hard kill) are not candidates.
    """
    best, best_step = None, -1
    for path in Path(directory).rglob("*.ckpt"):
        match = _CKPT_NAME.match(path.name)
        if match and not path.name.startswith(".") and int(match.group("step")) > best_step:
            best, best_step = path, int(match.group("step"))
    return best


def _network_params(network: nn.Cell) -> dict[str, Parameter]:
    return {param.name: param for param in network.get_parameters()}


def _optimizer_state(network: nn.Cell, optimizer: nn.Cell | None) -> dict[str, Parameter]:
    """Optimizer parameters that are not network parameters, by name (moments, step counters)."""
    if optimizer is None:
        return {}
    network_ids = {id(param) for param in network.get_parameters()}
    # experimental AdamW allocates AMSGrad maxima even when AMSGrad is off; they stay zero, so saving them
    # would only add a full parameter copy to every checkpoint.
    amsgrad = any(group.get("amsgrad", False) for group in getattr(optimizer, "param_groups", []))
    state = {}
    for param in optimizer.get_parameters():
        if id(param) in network_ids or (not amsgrad and param.name.startswith("max_exp_avg_sq.")):
            continue
        state[param.name] = param
    return state


def _rotate(path: Path, keep_checkpoint_max: int) -> list[Path]:
    """Delete the oldest ``<prefix>-<epoch>_<step>.ckpt`` siblings of ``path`` beyond ``keep_checkpoint_max``."""
    match = _CKPT_NAME.match(path.name)
    if match is None:
        raise ValueError(
            f"keep_checkpoint_max needs checkpoint names like '<prefix>-<epoch>_<step>.ckpt' "
            f"(see checkpoint_path); got '{path.name}'."
        )
    prefix = match.group("prefix")
    siblings = []
    for other in path.parent.iterdir():
        other_match = _CKPT_NAME.match(other.name)
        if other_match and other_match.group("prefix") == prefix:
            siblings.append(((int(other_match.group("epoch")), int(other_match.group("step"))), other))
    siblings.sort()
    removed = [other for _, other in siblings[: max(len(siblings) - keep_checkpoint_max, 0)]]
    for other in removed:
        other.unlink()
    return removed


def save_checkpoint(
    path: str | os.PathLike,
    network: nn.Cell,
    optimizer: nn.Cell | None = None,
    epoch: int = 0,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
    keep_checkpoint_max: int = 0,
) -> Path:
    """Atomically write a resumable checkpoint.

    Args:
        path: destination ``.ckpt`` file; its directory is created if needed.
        network: model Cell; all its parameters are saved under their ``Parameter.name``.
        optimizer: optimizer Cell whose non-network parameters (moments, step counter) are saved too.
        epoch: number of completed epochs (the epoch to resume from).
        step: global step (number of optimizer updates done).
        extra: more metadata for ``append_dict`` (int, float (stored as float32), bool, str or Tensor);
            names must not collide with parameter names or ``epoch``/``step``/``optimizer_state_keys``.
        keep_checkpoint_max: if > 0, keep only this many newest ``<prefix>-<epoch>_<step>.ckpt`` files of
            the same prefix in the directory (see :func:`checkpoint_path`).

    Returns:
        The written path.

    Raises:
        ValueError: for a path not ending in ``.ckpt`` (MindSpore would silently append the suffix), a
            metadata name colliding with a parameter or reserved name, or a name not following the rotation
            pattern when ``keep_checkpoint_max > 0``.
    """
    path = Path(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"checkpoint path must end with '.ckpt', got '{path}'.")
    params = _network_params(network)
    opt_state = _optimizer_state(network, optimizer)
    clash = sorted(set(params) & set(opt_state))
    if clash:
        raise ValueError(f"optimizer state names collide with network parameter names: {clash}")
    extra = dict(extra or {})
    bad_extra = sorted(set(extra) & (set(params) | set(opt_state) | set(_RESERVED_META)))
    if bad_extra:
        raise ValueError(f"extra metadata names {bad_extra} collide with parameter or reserved names.")
    append = {
        META_EPOCH: int(epoch),
        META_STEP: int(step),
        META_OPTIMIZER_KEYS: "\n".join(opt_state),
        META_EXTRA_KEYS: "\n".join(extra),
    }
    append.update(extra)
    save_list = [{"name": name, "data": param} for name, param in {**params, **opt_state}.items()]

    # The temporary name ends in .ckpt (MindSpore appends it otherwise); its leading dot keeps it out of rotation.
    with atomic_output(path, suffix=".ckpt") as tmp:
        ms.save_checkpoint(save_list, str(tmp), append_dict=append)
    if keep_checkpoint_max > 0:
        _rotate(path, keep_checkpoint_max)
    return path


def _load_dict(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint '{path}' does not exist; check the path")
    try:
        return ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, TypeError) as err:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip or legacy pickle format
            raise CheckpointFormatError(f"'{path}' is a PyTorch file, not a MindSpore checkpoint; convert it first "
                                        f"with tools/convert_weights.py") from err
        raise CheckpointFormatError(f"cannot read '{path}' as a MindSpore checkpoint: {err}") from err


def _check_shapes(targets: Mapping[str, Parameter], values: Mapping[str, Any], path) -> None:
    mismatched = [
        f"'{name}': checkpoint {tuple(values[name].shape)} vs model {tuple(param.shape)}"
        for name, param in targets.items()
        if name in values and tuple(values[name].shape) != tuple(param.shape)
    ]
    if mismatched:
        more = f"; and {len(mismatched) - SHOWN_KEYS} more" if len(mismatched) > SHOWN_KEYS else ""
        raise CheckpointShapeError(f"shape mismatch loading '{path}' for {len(mismatched)} key(s): "
                                   + "; ".join(mismatched[:SHOWN_KEYS]) + more
                                   + "; the checkpoint was made for other settings (classes, queries, sizes)")


def _assign(targets: Mapping[str, Parameter], values: Mapping[str, Any]) -> None:
    for name, param in targets.items():
        if name in values:
            value = values[name]
            # set_data with the checkpoint dtype could silently change the Parameter's dtype.
            param.set_data(ms.Tensor(value.asnumpy(), dtype=param.dtype))


def load_for_resume(path: str | os.PathLike, network: nn.Cell, optimizer: nn.Cell | None) -> tuple[int, int]:
    """Restore network parameters, optimizer state and return ``(epoch, step)`` from a training checkpoint.

    Every network parameter and every optimizer state parameter must be present with the same shape, so a
    resumed run continues bit-for-bit where the saved one stopped.

    Raises:
        FileNotFoundError: missing file.
        CheckpointMismatchError (a KeyError): the checkpoint lacks network/optimizer entries or epoch/step
            metadata (a few keys named, the rest counted).
        CheckpointShapeError (a ValueError): shape mismatch (up to three keys named with both shapes).
    """
    values = _load_dict(path)
    targets = {**_network_params(network), **_optimizer_state(network, optimizer)}
    missing = [name for name in targets if name not in values]
    missing += [name for name in (META_EPOCH, META_STEP) if name not in values]
    if missing:
        raise CheckpointMismatchError(
            f"checkpoint '{path}' cannot resume this run: {len(missing)} key(s) missing ({some_keys(missing)}); "
            f"a weight-only checkpoint goes to --pretrained, a checkpoint of another model to its own config"
        )
    _check_shapes(targets, values, path)
    _assign(targets, values)
    return int(values[META_EPOCH].asnumpy()), int(values[META_STEP].asnumpy())


def _non_weight_keys(values: Mapping[str, Any]) -> set[str]:
    """Metadata and optimizer-state entries of a checkpoint written by :func:`save_checkpoint`."""
    keys = {name for name, value in values.items() if not isinstance(value, Parameter)}
    keys |= {name for name in _RESERVED_META if name in values}
    for listing in (META_OPTIMIZER_KEYS, META_EXTRA_KEYS):
        names = values.get(listing)
        if isinstance(names, str) and names:
            keys |= set(names.split("\n"))
    return keys


CLASS_HEAD_KEY = re.compile(r"(^|\.)(class_embed|class_head|label_enc|cls_score|bbox_pred)(\.|$)")
"""Names of the tensors whose shape follows the class count: DETR ``class_embed``, Focus-DETR ``class_embed.*`` /
``class_head`` / ``label_enc`` (denoising label embedding), DeFRCN ``box_predictor.cls_score`` / ``bbox_pred``."""


def load_pretrained(
    path: str | os.PathLike, network: nn.Cell, strict: bool = True, reinit_class_heads: bool = False
) -> tuple[list[str], list[str]]:
    """Load weights into ``network`` by parameter name, reporting every missing/unexpected/mismatched key.

    Optimizer state and metadata written by :func:`save_checkpoint` are ignored, so both converted
    weight files and training checkpoints are accepted.

    Fine-tuning on another class count (``reinit_class_heads``), as detectron2's checkpointer does it: a class-head
    tensor (``CLASS_HEAD_KEY``) whose shape differs keeps its initialization, and all of them are listed in ONE
    warning; a shape mismatch anywhere else is still an error.

    Args:
        path: ``.ckpt`` file.
        network: model Cell.
        strict: if True, any missing or unexpected key is an error; if False they are logged and the
            matching keys are loaded.
        reinit_class_heads: tolerate class-head shape mismatches (see above).

    Returns:
        (missing_keys, unexpected_keys), each sorted; re-initialized class-head keys count as missing.

    Raises:
        CheckpointNotFoundError (a FileNotFoundError): missing file.
        CheckpointFormatError (a ValueError): not a MindSpore checkpoint (a PyTorch file is named as such).
        CheckpointMismatchError (a KeyError): ``strict`` and some keys are missing or unexpected; the message
            names the model the checkpoint belongs to (:mod:`src.checkpoint_kind`) and a few keys.
        CheckpointShapeError (a ValueError): a key present on both sides has a different shape (always an
            error: names up to three keys, the checkpoint shape and the model shape), except
            for tolerated class heads.
    """
    values = _load_dict(path)
    ignored = _non_weight_keys(values)
    weights = {name: value for name, value in values.items() if name not in ignored}
    targets = _network_params(network)
    reinit = []
    if reinit_class_heads:
        reinit = sorted(name for name, param in targets.items()
                        if name in weights and CLASS_HEAD_KEY.search(name)
                        and tuple(weights[name].shape) != tuple(param.shape))
        if reinit:
            logger.warning("loading '%s': %d class-head tensor(s) differ in shape (another class count) and keep "
                           "their initialization: %s", path, len(reinit),
                           "; ".join(f"{k} checkpoint {tuple(weights[k].shape)} vs model {tuple(targets[k].shape)}"
                                     for k in reinit))
            weights = {k: v for k, v in weights.items() if k not in reinit}
    missing = sorted(name for name in targets if name not in weights and name not in reinit)
    unexpected = sorted(name for name in weights if name not in targets)
    _check_shapes(targets, weights, path)
    if missing or unexpected:
        if strict:
            raise CheckpointMismatchError(mismatch_message(path, weights, targets, missing, unexpected))
        logger.warning("loading '%s': missing keys %s; unexpected keys %s", path, missing, unexpected)
    _assign(targets, weights)
    return sorted(missing + reinit), unexpected


META_CATEGORIES = "categories"
"""``extra`` entry of training checkpoints: the dataset's catalog as JSON (:meth:`src.data.catalog.Catalog.to_json`)."""


def checkpoint_catalog(path: str | os.PathLike):
    """The :class:`src.data.catalog.Catalog` a training checkpoint was trained on, or None (e.g. converted weights).

    Raises:
        FileNotFoundError: missing file. src.data.catalog.CatalogError: a malformed stored class list.
    """
    text = _load_dict(path).get(META_CATEGORIES)
    return Catalog.from_json(text, f"{path} ({META_CATEGORIES})") if isinstance(text, str) else None


def checkpoint_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensor entries of a checkpoint as numpy arrays (for inspection and tests)."""
    return {name: value.asnumpy() for name, value in _load_dict(path).items() if isinstance(value, Parameter)}
