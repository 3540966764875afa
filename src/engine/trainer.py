"""The training loop: data, one compiled train step, logging, checkpoints and exact resume.

Follows facebookresearch/detr ``main.py`` / ``engine.train_one_epoch`` in what it does per epoch, with
MindSpore's graph-mode train step (:class:`src.engine.train_step.TrainStep`) doing forward, loss, gradient
all-reduce, clipping and the optimizer update in one call. Two schedules:

* ``train.optimizer: adamw`` (DETR family, the default when the key is absent): ``train.epochs`` epochs,
  DETR's AdamW with its epoch step decay (:mod:`src.engine.optim.adamw`), a checkpoint every
  ``train.checkpoint_interval`` epochs and at the end.
* ``train.optimizer: sgd`` (DeFRCN): detectron2's iteration schedule (:mod:`src.engine.optim.sgd`): ``train.max_iter``
  updates after the linear scaling rule for the actual total batch, as many epochs as that takes (the last
  one cut short), a checkpoint every ``train.checkpoint_period`` iterations and at the end (per-epoch
  checkpoints would be one per update for a 1-shot set of a few images).

Outputs besides checkpoints: ``train.log``; ``metrics.jsonl`` (one JSON line per logged step: step, epoch,
loss and every loss term, lr, grad_norm, img_per_s; ``src.engine.metrics_log``) and ``loss_curve.png`` (loss
and lr against the step, ``src.engine.loss_plot``) at the end, from rank 0; a resumed run appends to
``metrics.jsonl``, a new one starts it afresh. The first step of the process
compiles the graph: it is logged before and after with its duration and left out of img/s and the ETA.

Resume: a checkpoint stores ``step`` (optimizer steps done) and ``epoch = step // steps_per_epoch``. The data
order of an epoch is a function of ``seed + epoch``, so a resumed run rebuilds that epoch's dataset and skips
the batches already consumed.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.checkpoint import (
    META_CATEGORIES,
    checkpoint_path,
    load_for_resume,
    load_pretrained,
    save_checkpoint,
)
from src.data.catalog import build_catalog
from src.data.dataset import create_dataset
from src.engine.logger import setup_logger
from src.engine.loss_plot import plot_runs
from src.engine.metrics_log import METRICS_FILE, append_metrics
from src.engine.optim.adamw import build_optimizer
from src.engine.optim.sgd import build_sgd, scale_schedule
from src.engine.train_step import TrainStep
from src.models import build_model
from src.runtime import RuntimeInfo


def parameter_digest(network) -> str:
    """SHA-256 over every parameter's name and bytes: equal digests mean identical weights (ranks in sync)."""
    digest = hashlib.sha256()
    for param in network.get_parameters():
        digest.update(param.name.encode())
        digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()


TRAIN_COLUMNS = ["image", "mask", "tgt_boxes", "tgt_labels", "tgt_valid"]


class StepSpeed:
    """Images/s and ETA over the steps after the first (graph compilation) of this process.

    ``tick()`` after each step; the clock starts at construction, i.e. right after the compile step.
    """

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.start = time.perf_counter()
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    def images_per_second(self) -> float:
        """Mean since the compile step; 0.0 before the second step."""
        elapsed = time.perf_counter() - self.start
        return self.steps * self.images_per_step / elapsed if self.steps and elapsed > 0 else 0.0

    def eta(self, steps_left: int) -> str:
        """Remaining time as H:MM:SS at the mean step time so far ("?" before the second step)."""
        if not self.steps:
            return "?"
        seconds = int(round(steps_left * (time.perf_counter() - self.start) / self.steps))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class TrainOptions:
    """Run-level options from the command line (everything else is in the config).

    Attributes:
        coco_path: dataset root: the COCO folder (``annotations/`` and the split images) or, for a DeFRCN VOC
            config, the VOCdevkit folder.
        output_dir: logs, the resolved config and ``checkpoints/`` go here.
        mindrecord_dir: MindRecord cache for the split (built on first use).
        resume: checkpoint to continue from (weights, optimizer state, epoch, step).
        pretrained: checkpoint whose weights initialize the network; class-head tensors whose shape differs (another
            class count, ``src.checkpoint.CLASS_HEAD_KEY``) keep their initialization, listed in one warning.
        max_steps: stop after this many optimizer steps in total (0: run the whole schedule).
        max_images: use only the first N images of the split (small runs and tests).
        strict_pretrained: every network key must be in ``pretrained`` and vice versa. False lets keys missing
            from it keep their initialization (a DeFRCN FSOD fine-tune from a ``remove`` surgery checkpoint
            re-learns the box predictor) and warns about them; unexpected keys and shape mismatches are
            still reported.
    """

    coco_path: str
    output_dir: str
    mindrecord_dir: str
    resume: str | None = None
    pretrained: str | None = None
    max_steps: int = 0
    max_images: int | None = None
    strict_pretrained: bool = True


@dataclass
class Plan:
    """What the optimizer and the loop need from the schedule.

    Attributes:
        optimizer: the optimizer Cell (``current_lr()`` for logging).
        total_steps: optimizer updates of the whole run.
        num_epochs: epochs needed for ``total_steps`` (the last one may stop early).
        checkpoint_interval: epochs between checkpoints (0: none by epoch).
        checkpoint_period: iterations between checkpoints (0: none by iteration).
        description: one log line describing the schedule.
    """

    optimizer: object
    total_steps: int
    num_epochs: int
    checkpoint_interval: int
    checkpoint_period: int
    description: str


def plan_schedule(network, train_cfg: dict, steps_per_epoch: int, rank_size: int) -> Plan:
    """Optimizer and step counts of ``train_cfg`` (``optimizer``: ``adamw`` by default, or ``sgd``).

    Raises:
        ValueError: an unknown ``train.optimizer``.
    """
    kind = train_cfg["optimizer"]
    if kind == "adamw":
        epochs = int(train_cfg["epochs"])
        return Plan(build_optimizer(network, train_cfg, steps_per_epoch), epochs * steps_per_epoch, epochs,
                    int(train_cfg["checkpoint_interval"]), 0, f"{epochs} epochs")
    if kind == "sgd":
        total_batch = int(train_cfg["batch_size"]) * rank_size
        schedule = scale_schedule(train_cfg, total_batch)
        description = (f"{schedule.max_iter} iterations, lr {schedule.base_lr:g}, steps {list(schedule.steps)}, "
                       f"warmup {schedule.warmup_iters} (linear scaling x{schedule.scale:g}: total batch "
                       f"{total_batch} vs train.ims_per_batch {train_cfg['ims_per_batch']})")
        return Plan(build_sgd(network, train_cfg, schedule), schedule.max_iter,
                    math.ceil(schedule.max_iter / steps_per_epoch), 0, schedule.checkpoint_period, description)
    raise ValueError(f"train.optimizer must be 'adamw' or 'sgd', got {kind!r}")


def train(cfg: dict, opts: TrainOptions, runtime: RuntimeInfo) -> dict:
    """Train the model of ``cfg`` on its training split and return a summary.

    Returns:
        dict with ``step`` (optimizer steps done), ``epoch``, ``last_loss`` (float),
        ``losses`` (list of per-step total losses of this process) and ``checkpoint`` (last path or None).

    Raises:
        FileNotFoundError / ValueError: from the data reader (named file, image id or key) or from
            checkpoint loading (named key and shapes).
        FloatingPointError: the loss became NaN or infinite.
    """
    logger = setup_logger(opts.output_dir, "train", runtime.rank_id)
    train_cfg, data_cfg = cfg["train"], cfg["data"]
    catalog = build_catalog(data_cfg, opts.coco_path, "train")
    logger.info("classes (%s): %s", catalog.source, ", ".join(f"{i} {n}" for i, n in zip(catalog.ids, catalog.names)))
    detector = build_model(cfg, distributed=runtime.distributed, catalog=catalog)
    if opts.pretrained:
        missing, _ = load_pretrained(opts.pretrained, detector.network, strict=opts.strict_pretrained,
                                     reinit_class_heads=True)
        logger.info("initialized weights from %s%s", opts.pretrained,
                    f"; {len(missing)} key(s) keep their initialization: {missing}" if missing else "")

    def make_dataset(epoch: int):
        return create_dataset(opts.coco_path, data_cfg, "train", opts.mindrecord_dir,
                              batch_size=train_cfg["batch_size"], rank_id=runtime.rank_id,
                              rank_size=runtime.rank_size, seed=train_cfg["seed"] + epoch, max_images=opts.max_images)

    steps_per_epoch = make_dataset(0).get_dataset_size()
    if steps_per_epoch == 0:
        raise ValueError(
            f"{opts.coco_path}: split {data_cfg['train_split']} gives no full batch of "
            f"{train_cfg['batch_size']} images per rank ({runtime.rank_size} ranks); lower --batch_size")
    plan = plan_schedule(detector.network, train_cfg, steps_per_epoch, runtime.rank_size)
    optimizer = plan.optimizer
    train_step = TrainStep(detector.train_network, optimizer, clip_max_norm=train_cfg["clip_max_norm"])
    train_step.set_train(True)

    step = 0
    if runtime.is_main and not opts.resume:
        (Path(opts.output_dir) / METRICS_FILE).unlink(missing_ok=True)
    if opts.resume:
        _, step = load_for_resume(opts.resume, detector.network, optimizer)
        logger.info("resumed from %s at epoch %d, step %d", opts.resume, step // steps_per_epoch, step)

    total_steps = plan.total_steps
    if opts.max_steps:
        total_steps = min(total_steps, opts.max_steps)
    logger.info("training %d steps (%d per epoch, batch %d x %d ranks); schedule: %s", total_steps, steps_per_epoch,
                train_cfg["batch_size"], runtime.rank_size, plan.description)

    def save(at_step: int):
        path = checkpoint_path(Path(opts.output_dir) / "checkpoints", cfg["model"]["name"],
                               at_step // steps_per_epoch, at_step)
        save_checkpoint(path, detector.network, optimizer, epoch=at_step // steps_per_epoch, step=at_step,
                        keep_checkpoint_max=train_cfg["keep_checkpoint_max"],
                        extra={META_CATEGORIES: catalog.to_json()})
        logger.info("saved %s", path)
        return path

    losses, last_ckpt, speed = [], None, None
    epoch = step // steps_per_epoch
    while step < total_steps and epoch < plan.num_epochs:
        dataset = make_dataset(epoch)
        done_in_epoch = step - epoch * steps_per_epoch
        if done_in_epoch > 0:
            dataset = dataset.skip(done_in_epoch)
        for batch in dataset.create_tuple_iterator(columns=TRAIN_COLUMNS, num_epochs=1):
            if speed is None:
                logger.info("compiling the train step graph (first step)...")
                compile_tic = time.perf_counter()
            loss, loss_terms, grad_norm = train_step(*batch)
            step += 1
            loss_value = float(loss.asnumpy())
            losses.append(loss_value)
            if not np.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step} (epoch {epoch})")
            if speed is None:
                logger.info("compiled and ran the first step in %.1f s; img/s and ETA exclude it",
                            time.perf_counter() - compile_tic)
                speed = StepSpeed(train_cfg["batch_size"] * runtime.rank_size)
            else:
                speed.tick()
            if step % train_cfg["log_interval"] == 0 or step == total_steps:
                values = dict(zip(detector.loss_names, loss_terms.asnumpy().tolist()))
                terms = " ".join(f"{name} {value:.4f}" for name, value in values.items())
                record = {"step": step, "epoch": epoch, "loss": loss_value, **values,
                          "lr": optimizer.current_lr(), "grad_norm": float(grad_norm.asnumpy()),
                          "img_per_s": speed.images_per_second()}
                logger.info("epoch %d step %d/%d loss %.4f %s grad_norm %.3f lr %.2e %.2f img/s ETA %s",
                            epoch, step, total_steps, loss_value, terms, record["grad_norm"], record["lr"],
                            record["img_per_s"], speed.eta(total_steps - step))
                if runtime.is_main:
                    append_metrics(opts.output_dir, record)
            if step >= total_steps:
                break
            if runtime.is_main and plan.checkpoint_period and step % plan.checkpoint_period == 0:
                last_ckpt = save(step)
        epoch_done = step == (epoch + 1) * steps_per_epoch
        next_epoch = epoch + 1 if epoch_done else epoch
        finished = step >= total_steps or next_epoch >= plan.num_epochs
        by_epoch = epoch_done and plan.checkpoint_interval and next_epoch % plan.checkpoint_interval == 0
        if runtime.is_main and (finished or by_epoch):
            last_ckpt = save(step)
        epoch = next_epoch
        if not epoch_done:
            break
    logger.info("finished at epoch %d step %d; parameter digest %s", epoch, step, parameter_digest(detector.network))
    if runtime.is_main and (Path(opts.output_dir) / METRICS_FILE).is_file():
        logger.info("loss curve: %s", plot_runs([opts.output_dir], Path(opts.output_dir) / "loss_curve.png",
                                                ["loss", "lr"]))
    return {"step": step, "epoch": epoch, "last_loss": losses[-1] if losses else None, "losses": losses,
            "checkpoint": str(last_ckpt) if last_ckpt else None}
