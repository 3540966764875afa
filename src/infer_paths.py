"""Input expansion and output naming for ``infer.py``: never write over an input, never two outputs to one name.

``--images`` takes files, directories (their image files, not recursive) and glob patterns (``**`` recurses,
Python's :mod:`glob`). Each input image gets an output name; its outputs are ``<name>.json``, ``<name>.jpg`` and,
with ``--attention``, ``<name>_decoder_attention.png`` / ``<name>_encoder_attention.png`` (:data:`OUTPUT_SUFFIXES`).

Naming rule: the name is the file stem. Inputs sharing a stem (``a/img.jpg``, ``b/img.png``) are qualified by
as many parent folders as needed to tell them apart (``a_img``, ``b_img``). A name whose output file would be one
of the inputs (an input lying in ``--output_dir`` with an output's name, e.g. ``out/cat.jpg``), or that an earlier
input already has, gets the suffix ``_det`` until it is free (``cat_det.jpg``). Names are compared
case-insensitively, for case-insensitive filesystems.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Dict, List, Sequence

from src.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""Files a directory given to ``--images`` contributes (case-insensitive); explicit files may have any name."""
OUTPUT_SUFFIXES = (".json", ".jpg", "_decoder_attention.png", "_encoder_attention.png")
"""What ``infer.py`` may write per image: ``<name><suffix>``."""
PROTECT_SUFFIX = "_det"


def expand_inputs(items: Sequence[str]) -> List[Path]:
    """Files, directories and glob patterns -> image files, in the given order (sorted within each item).

    A path listed twice (also through a directory or a pattern) is kept once.

    Raises:
        InputError: an item is neither an existing file or directory nor a pattern matching a file (the message
            names the item), or a directory holds no image file (named, with the extensions looked for).
    """
    paths: List[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise InputError(f"--images: directory '{item}' holds no image file ({', '.join(IMAGE_EXTENSIONS)})")
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"--images: pattern '{item}' matched no file; check the pattern, and quote it so "
                                 f"the shell passes it unexpanded")
        else:
            raise InputError(f"--images: image not found: '{item}' (give files, directories or glob patterns)")
        paths.extend(found)
    unique: Dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(Path(os.path.abspath(path)), path)
    return list(unique.values())


def _qualified(path: Path, depth: int) -> str:
    parents = [p for p in Path(os.path.abspath(path)).parent.parts if p not in ("/", "")][::-1][:depth][::-1]
    return "_".join([*parents, path.stem])


def output_names(images: Sequence[Path], output_dir: str | os.PathLike) -> List[str]:
    """One output name per image (see the module docstring): distinct, and no output of it is an input.

    Args:
        images: input image files (as from :func:`expand_inputs`, distinct files).
        output_dir: where ``infer.py`` writes.

    Returns:
        Names without suffix, in the order of ``images``.
    """
    names = [p.stem for p in images]
    for depth in range(1, 64):
        keys = [n.lower() for n in names]
        clashing = {k for k in keys if keys.count(k) > 1}
        if not clashing:
            break
        names = [_qualified(p, depth) if n.lower() in clashing else n for p, n in zip(images, names)]
    out = Path(output_dir)
    result: List[str] = []
    used = set()
    for name in names:
        while name.lower() in used or _overwrites_input(out, name, images):
            name += PROTECT_SUFFIX
        used.add(name.lower())
        result.append(name)
    return result


def _overwrites_input(out: Path, name: str, images: Sequence[Path]) -> bool:
    for suffix in OUTPUT_SUFFIXES:
        target = out / f"{name}{suffix}"
        if target.exists() and any(os.path.samefile(target, image) for image in images):
            return True
    return False
