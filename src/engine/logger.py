"""Logging to the console (every rank, prefixed with its rank) and to ``<output_dir>/<name>.log`` (rank 0)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logger(output_dir: str | Path | None, name: str, rank_id: int = 0) -> logging.Logger:
    """Return the ``detzoo`` logger at INFO level.

    Args:
        output_dir: folder for ``<name>.log`` (created; rank 0 only); None logs to the console only.
        name: log file stem, e.g. "train" or "eval".
        rank_id: this process's rank; msrun collects each rank's console in its own worker log.
    """
    logger = logging.getLogger("detzoo")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank_id}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if output_dir is not None and rank_id == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / f"{name}.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger
