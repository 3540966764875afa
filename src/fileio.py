"""Atomic file output: write beside the target, rename on success, remove on failure.

Every writer in the project (configs, checkpoints, MindRecord shards and stamps, results and metrics JSON,
inference outputs, exported graphs) goes through :func:`atomic_output` (or, for writers that choose their own
file names, :func:`temporary_name` and :func:`publish`), so a crash or an exception never leaves a truncated
file under the final name (``os.replace`` is atomic within one POSIX filesystem).

Permissions: the published file gets ``0666 & ~umask`` (0644 under umask 0022), whatever mode the writer
used (``tempfile.mkstemp`` creates 0600, ``mindspore.save_checkpoint`` and ``export`` leave 0400, MindRecord
0600), so teammates on a shared machine can read outputs exactly as they can read files made by ``open``.

Temporaries are named ``.tmp-<host>-<pid>-<token>-<final name>``. A process killed with SIGKILL cannot remove
its temporary; the next write into the same folder from the same host removes every temporary whose writer
process no longer exists (:func:`remove_stale_temporaries`). Temporaries of live processes and of other hosts
(a shared filesystem) are left alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".tmp-"


def _host() -> str:
    return socket.gethostname() or "localhost"


def file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (0o644 under umask 0o022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_name(final_name: str) -> str:
    """A hidden temporary file name for ``final_name``: ``.tmp-<host>-<pid>-<token>-<final_name>``."""
    return f"{TEMP_PREFIX}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{final_name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries in ``folder`` left by dead writers on this host; return what was removed.

    A temporary (file or folder) is stale when its name is ``.tmp-<this host>-<pid>-...`` and no process
    ``pid`` exists. Missing folders are fine (nothing to remove).
    """
    folder = Path(folder)
    pattern = re.compile(rf"{re.escape(TEMP_PREFIX + _host())}-(\d+)-[0-9a-f]{{8}}-")
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give the finished file ``tmp`` the umask's mode (:func:`file_mode`) and rename it to ``path``."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    return Path(path)


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on error it is removed.

    The folder is created, stale temporaries of dead writers in it are removed first, and the final file gets
    the umask's mode (see the module docstring). The yielded file does not exist yet.

    Args:
        path: the final file.
        suffix: the temporary file's suffix (default: ``path``'s), for writers that insist on one,
            e.g. ``ms.save_checkpoint`` appends ``.ckpt`` to names without it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.parent / (temporary_name(path.stem) + (path.suffix if suffix is None else suffix))
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
