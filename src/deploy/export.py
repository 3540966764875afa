"""Export the inference graph (network + post-process) with a static input shape, atomically.

The exported graph is :class:`src.models.contract.InferenceNet`: ``(image float32 [B, 3, H, W], mask bool
[B, H, W], orig_size int32 [B, 2]) -> (scores float32 [B, Q], labels int32 [B, Q], boxes float32 [B, Q, 4]
xyxy in original-image pixels)``, so a deployment needs no Python model code.

Image-size rule: the export shape (H, W) must be one of the config's ``data.eval_pad_buckets`` (so that
``eval.py`` with that single bucket pads exactly as the deployment does), and it must hold an eval-resized
image of either orientation, i.e. ``H >= data.eval_max_size`` and ``W >= data.eval_max_size`` (the long side
of the eval resize reaches ``eval_max_size``). The default is the largest eval bucket by area.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import mindspore as ms
import numpy as np

from src.deploy.bin_io import DeployError, input_specs
from src.fileio import publish, remove_stale_temporaries, temporary_name

EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}


def resolve_image_size(cfg: dict, image_size: Sequence[int] | None = None) -> tuple[int, int]:
    """The static (H, W) of the exported graph and of the preprocessed binaries.

    Args:
        cfg: the config (``data.eval_pad_buckets`` and ``data.eval_max_size`` are read).
        image_size: (H, W) requested by the user, or None for the largest eval pad bucket.

    Raises:
        DeployError: not two positive ints, not an eval pad bucket, or too small for an eval-resized image;
            the message lists the buckets and says how to add one.
    """
    buckets = [(int(b[0]), int(b[1])) for b in cfg["data"]["eval_pad_buckets"]]
    if image_size is None:
        height, width = max(buckets, key=lambda b: b[0] * b[1])
    else:
        if len(image_size) != 2 or any(int(v) <= 0 for v in image_size):
            raise DeployError(f"--image_size needs two positive integers H W, got {list(image_size)}")
        height, width = int(image_size[0]), int(image_size[1])
        if (height, width) not in buckets:
            raise DeployError(
                f"--image_size {height} {width} is not one of the config's data.eval_pad_buckets "
                f"{[list(b) for b in buckets]}; pick one, or add it to export, preprocess and eval alike with "
                f"--set 'data.eval_pad_buckets=[[{height}, {width}]]'")
    need = int(cfg["data"]["eval_max_size"])
    if height < need or width < need:
        raise DeployError(
            f"image size {height}x{width} (H x W) is smaller than needed: an eval-resized image reaches "
            f"data.eval_max_size={need} pixels on its long side in either orientation, so both sides must be "
            f">= {need}")
    return height, width


def example_inputs(height: int, width: int, batch_size: int = 1) -> list[ms.Tensor]:
    """Placeholder inputs fixing the exported shapes and dtypes (values do not matter to the export)."""
    if batch_size < 1:
        raise DeployError(f"--batch_size must be >= 1, got {batch_size}")
    image, mask, orig_size = input_specs(height, width, batch_size)
    return [ms.Tensor(np.zeros(image.shape, np.float32)), ms.Tensor(np.zeros(mask.shape, np.bool_)),
            ms.Tensor(np.full(orig_size.shape, [height, width], np.int32))]


def output_path(file_name: str | os.PathLike, file_format: str) -> Path:
    """``file_name`` with the format's extension (added unless already there, as MindSpore does)."""
    file_format = check_format(file_format)
    path = Path(file_name)
    suffix = EXTENSIONS[file_format]
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def check_format(file_format: str, device_target: str | None = None) -> str:
    """Normalize and validate the export format for a device target.

    Raises:
        DeployError: unknown format, or AIR on a device other than Ascend.
    """
    fmt = str(file_format).upper()
    if fmt not in EXTENSIONS:
        raise DeployError(f"unknown export format {file_format!r}; choose one of {sorted(EXTENSIONS)}")
    if fmt == "AIR" and device_target is not None and device_target != "Ascend":
        raise DeployError(f"AIR needs Ascend: MindSpore writes AIR files only with --device_target Ascend "
                          f"(got {device_target}); export MINDIR on CPU or GPU")
    return fmt


def _exporter_message(error: BaseException) -> str:
    """The exporter's own message without MindSpore's C++ call-stack appendix."""
    return str(error).split("\n---", 1)[0].strip()


def export_graph(net: ms.nn.Cell, inputs: Sequence[ms.Tensor], file_name: str | os.PathLike, file_format: str,
                 device_target: str = "CPU") -> Path:
    """Export ``net`` for ``inputs`` to ``file_name`` (+ the format's extension) without leaving partial files.

    MindSpore writes into a temporary name in the destination folder (it appends the extension itself); only a
    complete file is renamed to the final name, and every path starting with the temporary name is removed on
    failure (an interrupted or failed exporter can leave a truncated file behind).

    Returns:
        The written path.

    Raises:
        DeployError: bad format/device (see :func:`check_format`), or the exporter failed (its message is
            passed on, e.g. an operator the ONNX exporter does not support).
    """
    fmt = check_format(file_format, device_target)
    final = output_path(file_name, fmt)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp_stem = temporary_name(final.stem)
    tmp_base = final.parent / tmp_stem
    produced = final.parent / (tmp_stem + EXTENSIONS[fmt])
    try:
        try:
            ms.export(net, *inputs, file_name=str(tmp_base), file_format=fmt)
        except (RuntimeError, ValueError, TypeError) as error:
            raise DeployError(f"MindSpore's {fmt} exporter failed: {_exporter_message(error)}") from error
        if not produced.is_file():
            raise DeployError(f"MindSpore's {fmt} exporter reported success but wrote no '{produced}'")
        publish(produced, final)
    except BaseException:
        for leftover in final.parent.glob(tmp_stem + "*"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        raise
    return final
