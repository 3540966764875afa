"""Atomic file output: write beside the target, rename on success, remove on failure.

Every writer in the project (configs, checkpoints, MindRecord stamps, results and metrics JSON, inference
outputs, exported graphs) goes through :func:`atomic_output`, so a crash or an exception never leaves a
truncated file under the final name (``os.replace`` is atomic within one POSIX filesystem).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file; its folder is created.
        suffix: the temporary file's suffix (default: ``path``'s), for writers that insist on one,
            e.g. ``ms.save_checkpoint`` appends ``.ckpt`` to names without it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix if suffix is None else suffix,
                                    dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return ``Path(path)``."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return ``Path(path)``."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
