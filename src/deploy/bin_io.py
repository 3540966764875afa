"""The binary-file protocol between preprocess.py, the inference runners and postprocess.py.

Files carry raw C-order little-endian tensor bytes without a header; names and order say what they hold.
A *stem* is the COCO image id zero-padded to 12 digits (``000000005001``), so names sort like COCO file
names and parse back to the id.

Input folder (written by ``preprocess.py``, batch 1, the static shape of the exported graph (H, W)):

* ``<stem>_0.bin`` image: float32 [1, 3, H, W], RGB, ImageNet-normalized, zero-padded bottom/right;
* ``<stem>_1.bin`` mask: bool (one byte each) [1, H, W], True on padding;
* ``<stem>_2.bin`` orig_size: int32 [1, 2], (height, width) of the original image in pixels;
* ``<stem>.json``: sidecar with ``image_id``, ``orig_size`` and ``resized_size`` as (h, w) pixels and
  ``scale`` = resized / original as (sy, sx);
* ``manifest.txt``: one stem per line in evaluation order (the C++ harness reads only this, never a
  directory listing); ``manifest.json``: the same order plus the tensor specs, config and split.

Result folder (written by ``tools/infer_mindir.py`` or ``ascend310_infer``), one file per output tensor:

* ``<stem>_0.bin`` scores float32 [1, Q]; ``<stem>_1.bin`` labels int32 [1, Q] (COCO category ids);
  ``<stem>_2.bin`` boxes float32 [1, Q, 4], xyxy in ORIGINAL-image pixels (the exported graph contains the
  post-process, which scales by orig_size);
* ``manifest.txt``: the stems that were run, written after their outputs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from src.errors import InputError
from src.fileio import atomic_write_bytes, atomic_write_text

MANIFEST_TXT = "manifest.txt"
MANIFEST_JSON = "manifest.json"
INPUT_NAMES = ("image", "mask", "orig_size")
OUTPUT_NAMES = ("scores", "labels", "boxes")
_STEM = re.compile(r"^\d{12,}$")


class DeployError(InputError, RuntimeError):
    """A user-facing deployment failure; the message names the file or option and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, NumPy dtype name and static shape of one tensor file."""

    name: str
    dtype: str
    shape: tuple

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def input_specs(height: int, width: int, batch_size: int = 1) -> list[TensorSpec]:
    """Specs of the exported graph's inputs (image, mask, orig_size) for a (height, width) pad shape."""
    return [TensorSpec("image", "float32", (batch_size, 3, height, width)),
            TensorSpec("mask", "bool", (batch_size, height, width)),
            TensorSpec("orig_size", "int32", (batch_size, 2))]


def output_specs(num_queries: int, batch_size: int = 1) -> list[TensorSpec]:
    """Specs of the exported graph's outputs (scores, labels, boxes) for ``num_queries`` queries."""
    return [TensorSpec("scores", "float32", (batch_size, num_queries)),
            TensorSpec("labels", "int32", (batch_size, num_queries)),
            TensorSpec("boxes", "float32", (batch_size, num_queries, 4))]


def image_stem(image_id: int) -> str:
    """``5001`` -> ``'000000005001'`` (raises ValueError for a negative id, i.e. a padding row)."""
    if int(image_id) < 0:
        raise ValueError(f"image id {image_id} is a padding row, not an image")
    return f"{int(image_id):012d}"


def stem_image_id(stem: str) -> int:
    """Inverse of :func:`image_stem`."""
    return int(stem)


def tensor_path(directory: str | os.PathLike, stem: str, index: int) -> Path:
    """``directory/<stem>_<index>.bin``."""
    return Path(directory) / f"{stem}_{int(index)}.bin"


def write_tensor(path: str | os.PathLike, array: np.ndarray, spec: TensorSpec | None = None) -> Path:
    """Write ``array``'s raw C-order bytes through a temporary file and a rename.

    Raises:
        DeployError: ``array`` does not match ``spec`` (dtype or shape).
    """
    array = np.ascontiguousarray(array)
    if spec is not None and (array.dtype != np.dtype(spec.dtype) or tuple(array.shape) != tuple(spec.shape)):
        raise DeployError(f"{path}: {spec.name} must be {spec.dtype} {list(spec.shape)}, got {array.dtype} "
                          f"{list(array.shape)}")
    return atomic_write_bytes(path, array.tobytes())


def read_tensor(path: str | os.PathLike, spec: TensorSpec) -> np.ndarray:
    """Read a tensor file written for ``spec``.

    Raises:
        DeployError: missing file, or a byte size other than ``spec.nbytes`` (names the file, the expected
            dtype/shape and both sizes).
    """
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"tensor file '{path}' ({spec.name}) does not exist")
    size = path.stat().st_size
    if size != spec.nbytes:
        raise DeployError(f"'{path}' holds {size} bytes but {spec.name} {spec.dtype} {list(spec.shape)} needs "
                          f"{spec.nbytes}; was it written for another image size, batch size or model?")
    return np.fromfile(path, dtype=spec.dtype).reshape(spec.shape)


def write_manifest(directory: str | os.PathLike, stems: Sequence[str], extra: dict | None = None) -> Path:
    """Write ``manifest.txt`` (one stem per line), and ``manifest.json`` (``extra`` + stems) when ``extra``.

    ``manifest.txt`` is written last so that its presence marks a complete folder.
    """
    directory = Path(directory)
    if extra is not None:
        atomic_write_text(directory / MANIFEST_JSON, json.dumps({**extra, "images": list(stems)}, indent=1))
    return atomic_write_text(directory / MANIFEST_TXT, "".join(f"{stem}\n" for stem in stems))


def read_manifest(directory: str | os.PathLike) -> list[str]:
    """Stems listed in ``directory/manifest.txt``, in order (blank lines ignored).

    Raises:
        DeployError: no manifest (names the step that writes it), a malformed line (named by number), a
            repeated stem, or an empty list.
    """
    path = Path(directory) / MANIFEST_TXT
    if not path.is_file():
        raise DeployError(f"'{path}' does not exist: run preprocess.py to make an input folder, and an inference "
                          f"runner (tools/infer_mindir.py or ascend310_infer) to make a result folder")
    stems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stem = line.strip()
        if not stem:
            continue
        if not _STEM.match(stem):
            raise DeployError(f"{path}, line {number}: {stem!r} is not a 12-digit image id stem")
        stems.append(stem)
    if len(set(stems)) != len(stems):
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        raise DeployError(f"{path} lists images more than once: {repeated[:5]}")
    if not stems:
        raise DeployError(f"{path} lists no images")
    return stems


def read_manifest_json(directory: str | os.PathLike) -> dict:
    """``directory/manifest.json`` as a dict (DeployError when missing)."""
    path = Path(directory) / MANIFEST_JSON
    if not path.is_file():
        raise DeployError(f"'{path}' does not exist: make the input folder with preprocess.py")
    return json.loads(path.read_text(encoding="utf-8"))


def specs_from_json(entries: Iterable[dict]) -> list[TensorSpec]:
    """TensorSpecs from ``manifest.json``'s ``inputs`` list."""
    return [TensorSpec(e["name"], e["dtype"], tuple(int(v) for v in e["shape"])) for e in entries]
