"""Machine-readable training metrics: one JSON object per logged step in ``<run_dir>/metrics.jsonl``.

Each line holds ``step`` and ``epoch`` (int), ``loss`` and every named loss term, ``lr``, ``grad_norm`` and
``img_per_s`` (float), like detectron2's ``metrics.json`` and mmdetection's ``*.log.json`` (one JSON object
per line, appended, so a resumed run continues the same file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

from src.errors import InputError

METRICS_FILE = "metrics.jsonl"


def append_metrics(run_dir: str | Path, record: Dict[str, float]) -> None:
    """Append ``record`` as one JSON line to ``run_dir/metrics.jsonl`` (created with its folder).

    Non-finite floats are written as ``null`` so every line stays valid JSON.
    """
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean) + "\n")


class MetricsFormatError(InputError, ValueError):
    """A ``metrics.jsonl`` line that is not a JSON object."""


class MissingMetricError(InputError, KeyError):
    """A metric that no record of a run has."""


def read_metrics(run_dir: str | Path) -> List[dict]:
    """Records of ``run_dir/metrics.jsonl`` in file order.

    Raises:
        FileNotFoundError: the run has no ``metrics.jsonl`` (names the path).
        MetricsFormatError: a line is not a JSON object (names the file and line number).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {run_dir} a training output folder?")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MetricsFormatError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise MetricsFormatError(f"{path}:{number}: expected a JSON object")
            records.append(record)
    return records
