"""Logging to the console and to ``<output_dir>/<name>.log``; only rank 0 writes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logger(output_dir: str | Path | None, name: str, is_main: bool = True) -> logging.Logger:
    """Return the ``detzoo`` logger, printing INFO lines on rank 0 and warnings elsewhere.

    Args:
        output_dir: folder for ``<name>.log`` (created); None logs to the console only.
        name: log file stem, e.g. "train" or "eval".
        is_main: rank 0 logs INFO to console and file; other ranks only print warnings.
    """
    logger = logging.getLogger("detzoo")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if output_dir is not None and is_main:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / f"{name}.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger
