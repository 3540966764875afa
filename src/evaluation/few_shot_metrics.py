"""Few-shot detection metrics: COCO AP on all / base / novel classes, and the shots x seeds summary.

COCO split metrics follow DeFRCN's (and TFA's) ``COCOEvaluator``: the same detections are scored three times
with pycocotools, once over every category and once each with ``COCOeval.params.catIds`` restricted to the
base and to the novel category ids; the restricted runs' stats get a ``b`` / ``n`` prefix (``bAP``,
``nAP50`` ...). The detections are not filtered, so a detection of a base class on an image never influences
the novel numbers and vice versa (COCOeval only pairs detections and ground truth of the same category). Every
run is :func:`src.evaluation.coco_evaluator.run_cocoeval` (its ``cat_ids`` restriction for the subsets), so the
accumulation, the result conversion and the empty-detection handling are that module's; stats are fractions in
[0, 1] (DeFRCN prints them x100).

The run summary follows DeFRCN ``tools/extract_results.py``: for every shot count, the mean over the runs
(seeds or repeats) and a 95 % confidence half-width ``1.96 * std / sqrt(n)`` with the population standard
deviation (NumPy's default ``ddof=0``), written as a markdown table and a CSV file, both atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

from src.data.few_shot import COCO_BASE_IDS, COCO_NOVEL_IDS
from src.evaluation.coco_evaluator import STAT_NAMES, CocoEvaluator, load_coco_gt, run_cocoeval
from src.fileio import atomic_write_text

logger = logging.getLogger(__name__)

SPLIT_STAT_NAMES = STAT_NAMES[:6]
"""Stats reported per class subset (AP, AP50, AP75, APs, APm, APl), as DeFRCN keeps the AP-type ones."""


def run_cocoeval_on_categories(coco_gt: COCO, results: Sequence[dict], cat_ids: Iterable[int],
                               image_ids: Iterable[int] | None = None) -> Dict[str, float]:
    """COCOeval bbox restricted to ``cat_ids`` (``params.catIds``), printing the 12-line table.

    :func:`src.evaluation.coco_evaluator.run_cocoeval` with ``cat_ids`` required.

    Args:
        coco_gt: ground truth.
        results: COCO result dicts (``bbox`` ``[x, y, w, h]`` pixels), any categories.
        cat_ids: the category ids to average over; ids without ground truth in the scored images contribute
            nothing (pycocotools marks them -1 and leaves them out).
        image_ids: images to score; None scores every ground-truth image.

    Returns:
        dict ``STAT_NAMES`` -> float, with the same conventions as ``run_cocoeval`` (-1 where undefined).

    Raises:
        ValueError: an empty ``cat_ids``.
    """
    return run_cocoeval(coco_gt, results, image_ids, cat_ids=list(cat_ids))


def coco_few_shot_stats(annotations: str | os.PathLike | COCO, results: Sequence[dict],
                        base_ids: Optional[Sequence[int]] = COCO_BASE_IDS,
                        novel_ids: Optional[Sequence[int]] = COCO_NOVEL_IDS,
                        image_ids: Iterable[int] | None = None,
                        all_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """All-class, base-class and novel-class COCO stats of one set of detections.

    Args:
        annotations: COCO instances JSON path or a loaded ``COCO``.
        results: COCO result dicts.
        base_ids, novel_ids: COCO category ids of each subset (defaults: the 60 / 20 of the TFA COCO split);
            None skips that subset.
        image_ids: images to score; None scores every ground-truth image (as DeFRCN does).
        all_ids: categories of the overall stats; None takes every ground-truth category (DeFRCN's "all"
            run). A detector of a class subset (base training, FSOD) passes its own classes.

    Returns:
        The 12 ``STAT_NAMES`` over ``all_ids``, plus ``b`` + and ``n`` + each of ``SPLIT_STAT_NAMES``.
    """
    coco_gt = load_coco_gt(annotations)
    image_ids = list(image_ids) if image_ids is not None else None
    stats = run_cocoeval(coco_gt, results, image_ids, cat_ids=None if all_ids is None else list(all_ids))
    for prefix, ids in (("b", base_ids), ("n", novel_ids)):
        if ids is None:
            continue
        subset = run_cocoeval_on_categories(coco_gt, results, ids, image_ids)
        stats.update({prefix + name: subset[name] for name in SPLIT_STAT_NAMES})
    return stats


class FewShotCocoEvaluator(CocoEvaluator):
    """``CocoEvaluator`` whose :meth:`evaluate` also reports base (``bAP``...) and novel (``nAP``...) stats.

    Args:
        annotations, num_classes: as ``CocoEvaluator``.
        base_ids, novel_ids, all_ids: as :func:`coco_few_shot_stats`.
    """

    def __init__(self, annotations: str | os.PathLike | COCO, num_classes: int = 91,
                 base_ids: Optional[Sequence[int]] = COCO_BASE_IDS,
                 novel_ids: Optional[Sequence[int]] = COCO_NOVEL_IDS,
                 all_ids: Optional[Sequence[int]] = None):
        super().__init__(annotations, num_classes)
        self.base_ids = None if base_ids is None else tuple(base_ids)
        self.novel_ids = None if novel_ids is None else tuple(novel_ids)
        self.all_ids = None if all_ids is None else tuple(all_ids)

    def evaluate(self) -> Dict[str, float]:
        """Score the accumulated detections on the images passed to ``update`` (see the class docstring)."""
        if len(set(self.image_ids)) != len(self.image_ids):
            logger.warning("FewShotCocoEvaluator: some images were passed to update() more than once.")
        self.stats = coco_few_shot_stats(self.coco_gt, self.results, self.base_ids, self.novel_ids,
                                         self.image_ids, self.all_ids)
        return self.stats


# ------------------------------------------------------------------------------------------ run summaries
def summarize_runs(runs: Mapping[int, Sequence[Mapping[str, float]]],
                   metrics: Optional[Sequence[str]] = None) -> List[Dict[str, float]]:
    """Mean and 95 % confidence half-width per shot count over repeated runs.

    Args:
        runs: shot count K -> one metrics dict per run (seed), e.g. ``{1: [{"nAP50": 40.1, ...}, ...]}``.
        metrics: metric names to summarize, in column order; default: the first run's keys in order.

    Returns:
        One row per shot (ascending): ``{"shot": K, "runs": n, m: mean, m + "_ci95": 1.96 * std / sqrt(n)}``
        for every metric m, std being the population standard deviation.

    Raises:
        ValueError: no runs at all, a shot without runs, or a run missing one of the metrics.
    """
    if not runs:
        raise ValueError("summarize_runs needs at least one shot with runs")
    first = next(iter(runs.values()))
    if metrics is None:
        if not first:
            raise ValueError("summarize_runs: the first shot has no runs")
        metrics = list(first[0].keys())
    rows = []
    for shot in sorted(runs):
        shot_runs = runs[shot]
        if not shot_runs:
            raise ValueError(f"summarize_runs: {shot}-shot has no runs")
        row: Dict[str, float] = {"shot": int(shot), "runs": len(shot_runs)}
        for metric in metrics:
            missing = [i for i, run in enumerate(shot_runs) if metric not in run]
            if missing:
                raise ValueError(f"summarize_runs: {shot}-shot run(s) {missing} have no {metric!r}")
            values = np.asarray([float(run[metric]) for run in shot_runs], np.float64)
            row[metric] = float(values.mean())
            row[metric + "_ci95"] = float(1.96 * values.std() / math.sqrt(len(values)))
        rows.append(row)
    return rows


def _metric_names(rows: Sequence[Mapping[str, float]]) -> List[str]:
    return [k for k in rows[0] if k not in ("shot", "runs") and not k.endswith("_ci95")]


def summary_markdown(rows: Sequence[Mapping[str, float]], digits: int = 2) -> str:
    """Markdown table: one line per shot, each metric as ``mean ± ci95`` with ``digits`` decimals."""
    names = _metric_names(rows)
    lines = ["| shot | runs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = [f"{row[m]:.{digits}f} ± {row[m + '_ci95']:.{digits}f}" for m in names]
        lines.append(f"| {row['shot']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(rows: Sequence[Mapping[str, float]]) -> str:
    """CSV text with columns ``shot, runs`` then ``m, m_ci95`` per metric (full precision)."""
    names = _metric_names(rows)
    header = ["shot", "runs"] + [col for m in names for col in (m, m + "_ci95")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[col] for col in header])
    return buffer.getvalue()


def write_summary(rows: Sequence[Mapping[str, float]], markdown_path: str | os.PathLike | None = None,
                  csv_path: str | os.PathLike | None = None, digits: int = 2) -> List[Path]:
    """Write the summary as markdown and/or CSV, each atomically; returns the written paths.

    Raises:
        ValueError: empty ``rows``.
    """
    if not rows:
        raise ValueError("write_summary: no rows")
    written = []
    if markdown_path is not None:
        written.append(atomic_write_text(markdown_path, summary_markdown(rows, digits)))
    if csv_path is not None:
        written.append(atomic_write_text(csv_path, summary_csv(rows)))
    return written
