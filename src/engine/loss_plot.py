"""Loss curves from ``metrics.jsonl`` files with matplotlib, several runs on one figure.

Follows the idea of detectron2's and mmdetection's log analysis tools (``tools/analysis_tools/analyze_logs.py``
plot_curve): one line per (run, key) against the training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

from src.engine.metrics_log import MissingMetricError, read_metrics  # noqa: E402
from src.fileio import atomic_output  # noqa: E402

DEFAULT_KEYS = ("loss",)


def plot_runs(run_dirs: Sequence[str | Path], output: str | Path, keys: Sequence[str] = DEFAULT_KEYS) -> Path:
    """Plot ``keys`` of every run's ``metrics.jsonl`` against ``step`` into the PNG ``output``.

    Args:
        run_dirs: training output folders (each with a ``metrics.jsonl``).
        output: PNG path; written atomically (``src.fileio.atomic_output``), so a failure leaves nothing.
        keys: metric names, e.g. ``loss``, ``loss_ce``, ``lr``; one subplot each.

    Returns:
        ``output`` as a Path.

    Raises:
        FileNotFoundError / src.engine.metrics_log.MetricsFormatError: a missing or malformed ``metrics.jsonl``
            (from ``read_metrics``).
        src.engine.metrics_log.MissingMetricError: a key that no record of a run has; names the key, the run and
            the keys it has.
    """
    output = Path(output)
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 3 * len(keys)), squeeze=False, sharex=True)
    try:
        for ax, key in zip(axes[:, 0], keys):
            for run_dir, records in runs:
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                if not points:
                    available = sorted({k for r in records for k in r})
                    raise MissingMetricError(f"{run_dir}: no value of {key!r} in metrics.jsonl (keys: {available})")
                steps, values = zip(*points)
                ax.plot(steps, values, label=run_dir.name or str(run_dir))
            ax.set_ylabel(key)
            ax.grid(True, alpha=0.3)
            ax.legend()
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        with atomic_output(output) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return output
