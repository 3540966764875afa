"""The training loop: data, one compiled train step, logging, per-epoch checkpoints and exact resume.

Follows facebookresearch/detr ``main.py`` / ``engine.train_one_epoch`` in what it does per epoch, with
MindSpore's graph-mode train step (:class:`src.engine.train_step.TrainStep`) doing forward, in-graph
Hungarian matching, loss, gradient all-reduce, clipping and the AdamW update in one call.

Resume: a checkpoint stores ``epoch`` (the epoch it was written in, or the next one when written at an
epoch's end) and ``step`` (optimizer steps done). The data order of an epoch is a function of
``seed + epoch``, so a resumed run rebuilds that epoch's dataset and skips the batches already consumed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data.dataset import create_coco_dataset
from src.engine.checkpoint import checkpoint_path, load_for_resume, load_pretrained, save_checkpoint
from src.engine.logger import setup_logger
from src.engine.lr_schedule import build_optimizer
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


@dataclass
class TrainOptions:
    """Run-level options from the command line (everything else is in the config).

    Attributes:
        coco_path: COCO folder with ``annotations/instances_{split}.json`` and ``{split}/`` images.
        output_dir: logs, the resolved config and ``checkpoints/`` go here.
        mindrecord_dir: MindRecord cache for the split (built on first use).
        resume: checkpoint to continue from (weights, optimizer state, epoch, step).
        pretrained: checkpoint whose weights initialize the network (strict: every key must match).
        max_steps: stop after this many optimizer steps in total (0: run all epochs).
        max_images: use only the first N images of the split (small runs and tests).
    """

    coco_path: str
    output_dir: str
    mindrecord_dir: str
    resume: str | None = None
    pretrained: str | None = None
    max_steps: int = 0
    max_images: int | None = None


def train(cfg: dict, opts: TrainOptions, runtime: RuntimeInfo) -> dict:
    """Train the model of ``cfg`` on ``cfg['data']['train_split']`` and return a summary.

    Returns:
        dict with ``step`` (optimizer steps done), ``epoch``, ``last_loss`` (float),
        ``losses`` (list of per-step total losses of this process) and ``checkpoint`` (last path or None).

    Raises:
        FileNotFoundError / ValueError: from the data reader (named file, image id or key) or from
            checkpoint loading (named key and shapes).
    """
    logger = setup_logger(opts.output_dir, "train", runtime.rank_id)
    train_cfg, data_cfg = cfg["train"], cfg["data"]
    detector = build_model(cfg, distributed=runtime.distributed)
    if opts.pretrained:
        load_pretrained(opts.pretrained, detector.network, strict=True)
        logger.info("initialized weights from %s", opts.pretrained)

    def make_dataset(epoch: int):
        return create_coco_dataset(
            opts.coco_path, data_cfg["train_split"], opts.mindrecord_dir, is_training=True,
            batch_size=train_cfg["batch_size"], data_cfg=data_cfg, rank_id=runtime.rank_id,
            rank_size=runtime.rank_size, seed=train_cfg["seed"] + epoch, max_images=opts.max_images)

    steps_per_epoch = make_dataset(0).get_dataset_size()
    if steps_per_epoch == 0:
        raise ValueError(
            f"{opts.coco_path}: split {data_cfg['train_split']} gives no full batch of "
            f"{train_cfg['batch_size']} images per rank ({runtime.rank_size} ranks); lower --batch_size")
    optimizer = build_optimizer(detector.network, train_cfg, steps_per_epoch)
    train_step = TrainStep(detector.network, detector.criterion, optimizer,
                           clip_max_norm=train_cfg["clip_max_norm"])
    train_step.set_train(True)

    start_epoch, step = 0, 0
    if opts.resume:
        start_epoch, step = load_for_resume(opts.resume, detector.network, optimizer)
        logger.info("resumed from %s at epoch %d, step %d", opts.resume, start_epoch, step)

    total_steps = train_cfg["epochs"] * steps_per_epoch
    if opts.max_steps:
        total_steps = min(total_steps, opts.max_steps)
    logger.info("training %d steps (%d per epoch, batch %d x %d ranks)", total_steps, steps_per_epoch,
                train_cfg["batch_size"], runtime.rank_size)

    losses, last_ckpt = [], None
    epoch = start_epoch
    while step < total_steps and epoch < train_cfg["epochs"]:
        dataset = make_dataset(epoch)
        done_in_epoch = step - epoch * steps_per_epoch
        if done_in_epoch > 0:
            dataset = dataset.skip(done_in_epoch)
        tic, images_seen = time.perf_counter(), 0
        for batch in dataset.create_tuple_iterator(columns=TRAIN_COLUMNS, num_epochs=1):
            loss, loss_terms, grad_norm = train_step(*batch)
            step += 1
            loss_value = float(loss.asnumpy())
            losses.append(loss_value)
            if not np.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step} (epoch {epoch})")
            images_seen += train_cfg["batch_size"] * runtime.rank_size
            if step % train_cfg["log_interval"] == 0 or step == total_steps:
                terms = " ".join(f"{name} {value:.4f}" for name, value in
                                 zip(detector.loss_names, loss_terms.asnumpy().tolist()))
                speed = images_seen / max(time.perf_counter() - tic, 1e-9)
                logger.info("epoch %d step %d/%d loss %.4f %s grad_norm %.3f lr %.2e %.2f img/s",
                            epoch, step, total_steps, loss_value, terms, float(grad_norm.asnumpy()),
                            optimizer.current_lr(), speed)
            if step >= total_steps:
                break
        epoch_done = step == (epoch + 1) * steps_per_epoch
        next_epoch = epoch + 1 if epoch_done else epoch
        finished = step >= total_steps or next_epoch >= train_cfg["epochs"]
        if runtime.is_main and (finished or next_epoch % train_cfg["checkpoint_interval"] == 0):
            last_ckpt = checkpoint_path(Path(opts.output_dir) / "checkpoints", cfg["model"]["name"], next_epoch, step)
            save_checkpoint(last_ckpt, detector.network, optimizer, epoch=next_epoch, step=step,
                            keep_checkpoint_max=train_cfg["keep_checkpoint_max"])
            logger.info("saved %s", last_ckpt)
        epoch = next_epoch
        if not epoch_done:
            break
    logger.info("finished at epoch %d step %d; parameter digest %s", epoch, step, parameter_digest(detector.network))
    return {"step": step, "epoch": epoch, "last_loss": losses[-1] if losses else None, "losses": losses,
            "checkpoint": str(last_ckpt) if last_ckpt else None}
