"""The few-shot protocol over shots x seeds: surgery once, then fine-tune and evaluate every run, one table.

Follows er-muyue/DeFRCN ``run_coco.sh`` / ``run_voc.sh`` and ``tools/extract_results.py``:

* the base-training checkpoint goes through model surgery once (``remove`` for FSOD, where the novel-class
  head is learned from scratch; ``randinit`` for gFSOD, where base rows move to their all-class indices);
* every run fine-tunes from that checkpoint with the config of its shot count (``data.shot``, ``data.seed``
  select the K-shot split) and is evaluated (with PCB when the config enables it);
* "FSRW-like" runs repeat seed 0 (DeFRCN's FSOD tables: the FSRW split, 10 repeats), "TFA-like" runs use
  seeds 0-9 once each (the gFSOD tables). A repeat trains with ``train.seed`` moved by the repeat index, so
  repeats differ in their sampling and initialisation as DeFRCN's unseeded repeats do;
* per shot, the mean over runs and the 95 % half-width ``1.96 * std / sqrt(n)`` (population std) of each
  metric, in percent, written as markdown and CSV (:mod:`src.evaluation.few_shot_metrics`), plus one CSV line
  per run.

Resume: a run is finished when its ``eval/metrics.json`` exists (eval writes it atomically), and is then read
instead of run again; a run whose training finished (``train_done.json``) is only evaluated; a run whose
training stopped part-way resumes from its latest checkpoint. The tables are rewritten after every run.

Run folders: ``OUT/{K}shot_seed{S}`` (one run per seed) or ``OUT/{K}shot_seed{S}_repeat{r}`` (repeats), as
DeFRCN names them; each holds ``train/`` (trainer output), ``eval/`` (metrics.json, detections) and the
logs of both commands.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from src.checkpoint import latest_checkpoint
from src.evaluation.few_shot_metrics import summarize_runs, write_summary
from src.fileio import atomic_write_text

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("fsod", "gfsod")
DATASETS = ("coco", "voc")
SURGERY_METHOD = {"fsod": "remove", "gfsod": "randinit"}
SURGERY_FILE = {"fsod": "model_reset_remove.ckpt", "gfsod": "model_reset_surgery.ckpt"}
METRICS = {
    # FSOD detectors only know the novel classes, so only the novel numbers exist.
    ("coco", "fsod"): ("nAP", "nAP50", "nAP75"),
    ("coco", "gfsod"): ("nAP", "nAP50", "nAP75", "bAP", "AP"),
    ("voc", "fsod"): ("nAP50",),
    ("voc", "gfsod"): ("nAP50", "bAP50", "AP50"),
}
"""Metrics collected per (dataset, setting), in table column order (DeFRCN reports COCO AP and VOC AP50)."""
TRAIN_DONE = "train_done.json"


class ProtocolError(RuntimeError):
    """A run failed or left unusable output; the message names the run, the file or the log to read."""


def parse_seeds(tokens: Sequence[str]) -> List[int]:
    """Seeds from command-line tokens: single values and inclusive ranges, e.g. ``["0-9"]``, ``["0", "3,5"]``.

    Returns:
        The seeds in the order given, duplicates removed.

    Raises:
        ValueError: a token that is neither a non-negative integer nor a range ``A-B`` with ``A <= B``.
    """
    seeds: List[int] = []
    for token in tokens:
        for part in str(token).split(","):
            part = part.strip()
            if not part:
                continue
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if match is None:
                raise ValueError(f"bad seed {part!r}: use integers and ranges like 0-9")
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) is not None else first
            if last < first:
                raise ValueError(f"bad seed range {part!r}: the end is below the start")
            seeds.extend(s for s in range(first, last + 1) if s not in seeds)
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def run_name(shot: int, seed: int, repeat: Optional[int] = None) -> str:
    """DeFRCN's run folder name: ``{K}shot_seed{S}``, plus ``_repeat{r}`` for repeated runs."""
    base = f"{shot}shot_seed{seed}"
    return base if repeat is None else f"{base}_repeat{repeat}"


@dataclass(frozen=True)
class RunSpec:
    """One fine-tune + evaluation of the grid.

    Attributes:
        shot: K. seed: split seed. repeat: repeat index, or None when each seed runs once.
        run_dir: the run's folder.
    """

    shot: int
    seed: int
    repeat: Optional[int]
    run_dir: Path

    @property
    def name(self) -> str:
        return run_name(self.shot, self.seed, self.repeat)

    @property
    def train_dir(self) -> Path:
        return self.run_dir / "train"

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / "eval"

    @property
    def metrics_path(self) -> Path:
        return self.eval_dir / "metrics.json"


def plan_runs(shots: Sequence[int], seeds: Sequence[int], repeats: int, output_dir: str | Path) -> List[RunSpec]:
    """The grid in execution order: repeat, then seed, then shot (so every shot gets a first run early).

    Args:
        shots: shot counts K (positive). seeds: split seeds. repeats: runs per (shot, seed), >= 1; with 1 the
            run folders carry no repeat suffix.

    Raises:
        ValueError: no shots, a non-positive shot, duplicate shots or ``repeats < 1``.
    """
    shots = [int(k) for k in shots]
    if not shots or any(k <= 0 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"shots must be distinct positive integers, got {shots}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = Path(output_dir)
    specs = []
    for repeat in range(repeats):
        for seed in seeds:
            for shot in shots:
                rep = repeat if repeats > 1 else None
                specs.append(RunSpec(shot, int(seed), rep, out / run_name(shot, int(seed), rep)))
    return specs


def read_metrics(path: str | Path, names: Sequence[str]) -> Optional[Dict[str, float]]:
    """The ``names`` of a run's ``metrics.json`` (``{"bbox": {...}}``, fractions) in percent, or None if absent.

    A null value (a VOC class set without ground truth) reads as NaN.

    Raises:
        ProtocolError: an unreadable file or one without every requested metric (names the file and keys).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        bbox = json.loads(path.read_text(encoding="utf-8"))["bbox"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProtocolError(f"cannot read the metrics of {path}: {err!r}; delete it to rerun the evaluation") from err
    missing = [name for name in names if name not in bbox]
    if missing:
        raise ProtocolError(f"{path} has no {missing} (it has {sorted(bbox)}); was it evaluated with another "
                            "class setting? Delete it to rerun the evaluation")
    return {name: math.nan if bbox[name] is None else 100.0 * float(bbox[name]) for name in names}


def runs_csv(results: Sequence[tuple], names: Sequence[str]) -> str:
    """CSV text, one line per finished run: ``shot, seed, repeat`` then the metrics (percent)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["shot", "seed", "repeat", *names])
    for spec, metrics in results:
        writer.writerow([spec.shot, spec.seed, "" if spec.repeat is None else spec.repeat,
                         *(metrics[name] for name in names)])
    return buffer.getvalue()


def write_tables(results: Sequence[tuple], names: Sequence[str], output_dir: str | Path) -> List[Path]:
    """Write ``results.md`` / ``results.csv`` (per-shot mean and 95 % half-width) and ``runs.csv``, atomically.

    Args:
        results: ``(RunSpec, metrics in percent)`` of the finished runs.
        names: metric columns.

    Returns:
        The written paths (none when no run has finished).
    """
    if not results:
        return []
    by_shot: Dict[int, List[Mapping[str, float]]] = {}
    for spec, metrics in results:
        by_shot.setdefault(spec.shot, []).append(metrics)
    out = Path(output_dir)
    rows = summarize_runs(by_shot, list(names))
    written = write_summary(rows, out / "results.md", out / "results.csv")
    written.append(atomic_write_text(out / "runs.csv", runs_csv(results, names)))
    return written


def run_grid(specs: Sequence[RunSpec], runner: Callable[[RunSpec], None], names: Sequence[str],
             output_dir: str | Path) -> List[tuple]:
    """Run every unfinished run of ``specs`` with ``runner`` and keep the tables current.

    Args:
        specs: from :func:`plan_runs`.
        runner: does one run; must leave ``spec.metrics_path`` behind (the real one is
            :class:`SubprocessRunner`; tests inject fakes).
        names: metrics to collect (:data:`METRICS`).
        output_dir: where the tables go.

    Returns:
        ``(RunSpec, metrics in percent)`` for every run, in ``specs`` order.

    Raises:
        ProtocolError: a run that finished without a metrics file, or an unreadable metrics file. Tables of
            the runs finished so far are written before the error propagates (also the runner's own errors).
    """
    results = []
    for index, spec in enumerate(specs):
        metrics = read_metrics(spec.metrics_path, names)
        if metrics is not None:
            logger.info("[%d/%d] %s: finished earlier, read %s", index + 1, len(specs), spec.name, spec.metrics_path)
        else:
            logger.info("[%d/%d] %s: running in %s", index + 1, len(specs), spec.name, spec.run_dir)
            runner(spec)
            metrics = read_metrics(spec.metrics_path, names)
            if metrics is None:
                raise ProtocolError(f"run {spec.name} ended without {spec.metrics_path}")
        results.append((spec, metrics))
        write_tables(results, names, output_dir)
        logger.info("%s: %s", spec.name, ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return results


@dataclass
class SubprocessRunner:
    """One run as two commands: ``train.py`` (fine-tune) then ``eval.py``, each logged in the run folder.

    Attributes:
        config: the fine-tune config of each shot (shot -> YAML path).
        setting: ``fsod`` (the surgery checkpoint lacks the box predictor: loaded with
            ``--pretrained_partial``) or ``gfsod``.
        pretrained: the surgery checkpoint.
        coco_path: dataset root passed to both commands.
        mindrecord_dir: MindRecord cache shared by all runs.
        device_target: CPU, GPU or Ascend.
        overrides: ``KEY=VALUE`` config overrides for both commands, placed before the run's own shot, seed and
            repeat seed so that those always win (``train_seed`` already includes a user's ``train.seed``).
        train_seed: the config's ``train.seed``; repeat r trains with ``train_seed + r``.
        delete_checkpoints: remove the fine-tuned checkpoints once evaluated (DeFRCN's scripts do).
        max_eval_images: evaluate only the first N images (quick checks; None: the whole test set).
        python: interpreter for the commands.
        dry_run: log the commands instead of running them.
        pynative: run both commands in PyNative mode (``--pynative``; quick checks of tiny models, where graph
            compilation dominates).
    """

    config: Mapping[int, Path]
    setting: str
    pretrained: Path
    coco_path: str
    mindrecord_dir: Path
    device_target: str = "CPU"
    overrides: Sequence[str] = ()
    train_seed: int = 42
    delete_checkpoints: bool = False
    max_eval_images: Optional[int] = None
    python: str = sys.executable
    dry_run: bool = False
    pynative: bool = False
    commands: List[List[str]] = field(default_factory=list)

    def _overrides(self, spec: RunSpec) -> List[str]:
        sets = [f"data.shot={spec.shot}", f"data.seed={spec.seed}"]
        if spec.repeat is not None:
            sets.append(f"train.seed={self.train_seed + spec.repeat}")
        return list(self.overrides) + sets

    def train_command(self, spec: RunSpec, resume: Optional[Path] = None) -> List[str]:
        cmd = [self.python, str(REPO_ROOT / "train.py"), "--config", str(self.config[spec.shot]),
               "--coco_path", str(self.coco_path), "--output_dir", str(spec.train_dir),
               "--mindrecord_dir", str(self.mindrecord_dir), "--device_target", self.device_target,
               "--pretrained", str(self.pretrained)]
        if self.setting == "fsod":
            cmd.append("--pretrained_partial")
        if self.pynative:
            cmd.append("--pynative")
        if resume is not None:
            cmd += ["--resume", str(resume)]
        return cmd + ["--set", *self._overrides(spec)]

    def eval_command(self, spec: RunSpec, checkpoint: Path) -> List[str]:
        cmd = [self.python, str(REPO_ROOT / "eval.py"), "--config", str(self.config[spec.shot]),
               "--coco_path", str(self.coco_path), "--checkpoint", str(checkpoint), "--output_dir",
               str(spec.eval_dir), "--mindrecord_dir", str(self.mindrecord_dir), "--device_target",
               self.device_target]
        if self.max_eval_images is not None:
            cmd += ["--max_images", str(self.max_eval_images)]
        if self.pynative:
            cmd.append("--pynative")
        return cmd + ["--set", *self._overrides(spec)]

    def _run(self, cmd: List[str], log_path: Path, spec: RunSpec) -> None:
        self.commands.append(cmd)
        if self.dry_run:
            logger.info("would run: %s", subprocess.list2cmdline(cmd))
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        if code != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise ProtocolError(f"run {spec.name}: {Path(cmd[1]).name} exited with {code}; see {log_path}:\n{tail}")

    def __call__(self, spec: RunSpec) -> None:
        done = spec.run_dir / TRAIN_DONE
        if done.is_file():
            checkpoint = Path(json.loads(done.read_text(encoding="utf-8"))["checkpoint"])
        else:
            resume = latest_checkpoint(spec.train_dir) if spec.train_dir.is_dir() else None
            self._run(self.train_command(spec, resume), spec.run_dir / "train.log", spec)
            checkpoint = latest_checkpoint(spec.train_dir) if not self.dry_run else spec.train_dir / "final.ckpt"
            if checkpoint is None:
                raise ProtocolError(f"run {spec.name}: training wrote no checkpoint under {spec.train_dir}")
            if not self.dry_run:
                atomic_write_text(done, json.dumps({"checkpoint": str(checkpoint)}))
        self._run(self.eval_command(spec, checkpoint), spec.run_dir / "eval.log", spec)
        if self.delete_checkpoints and not self.dry_run:
            for path in spec.train_dir.rglob("*.ckpt"):
                path.unlink()
            done.unlink()  # it names a checkpoint that is gone: a rerun of this run trains again
