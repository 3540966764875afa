"""Detection pipeline on ``mindspore.dataset``: MindRecord -> decode + augment -> padded static batches.

Entry point: :func:`create_dataset` (any data config of any model family, through the sources of
``src.data.sources``): the one builder of training, evaluation and ``preprocess.py``.

Batch columns (``BATCH_COLUMNS``), B = batch size, N = ``data_cfg['max_boxes']``, (H, W) = pad bucket:

* ``image`` float32 [B, 3, H, W]: RGB, ImageNet-normalized (or BGR minus the Caffe mean with
  ``data.normalize: caffe_bgr``, see ``src.data.transforms.NORMALIZE_MODES``), zero-padded bottom/right.
* ``mask`` bool [B, H, W]: True on padding (DETR convention).
* ``tgt_boxes`` float32 [B, N, 4]: normalized cxcywh relative to the unpadded resized image; padded rows 0.
* ``tgt_labels`` int32 [B, N]: dataset category ids (the catalog's ids, ``src.data.catalog``); padded rows 0.
* ``tgt_valid`` bool [B, N]: True for real boxes, which come first.
* ``image_id`` int64 [B]; ``orig_size`` int32 [B, 2] (h, w) of the original image; ``img_size`` int32 [B, 2]
  (h, w) after resizing, before padding.

Each batch is padded to the smallest (by area) bucket of ``data_cfg['train_pad_buckets']`` /
``['eval_pad_buckets']`` that holds all its images, so graph mode compiles once per bucket; ``eval_pad_buckets``
None pads an evaluation batch to its own largest size only (at batch 1: no padding, ``src.evaluation.unpadded``).

Training drops the last incomplete batch. Evaluation keeps every image: an incomplete last batch is filled up
to ``batch_size`` with dummy rows (``image_id`` -1, zero image, mask False, no valid targets, sizes equal
to the bucket) that evaluators must skip. A zero image with mask False keeps attention free of fully masked
rows, which would produce NaN. In distributed evaluation, ranks whose share is one image short get a dummy
sample too (``image_id`` -1, a 1x1 zero image whose padding is masked), so every image is evaluated once.

Crowd boxes are dropped from the targets in training and evaluation alike, as detr's
``ConvertCocoPolysToMask`` does; COCO evaluation reads crowd regions from the annotation file.
Images without boxes are kept in evaluation, and in training unless ``data.filter_empty`` is on (detr trains on
them with empty targets; its configs turn the filter off).
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, Optional, Sequence

import mindspore.dataset as ds
import numpy as np

from src.data.group_sampler import group_bucket, orientation_groups, plan_group_batches
from src.data.mindrecord import ensure_source_mindrecord, read_stamp
from src.data.mosaic import MosaicSampleTransform, add_mosaic_partners
from src.data.sources import build_source
from src.data.transforms import build_eval_transform, build_train_transform, decode_image, prepare_target

logger = logging.getLogger(__name__)

RECORD_COLUMNS = [
    "image", "image_id", "height", "width", "boxes", "category_id", "iscrowd", "file_name", "num_boxes",
]
SAMPLE_COLUMNS = ["image", "boxes", "labels", "image_id", "orig_size", "img_size"]
PADDED_IMAGE_ID = -1  # image_id of dummy rows and samples; evaluators skip it
BATCH_COLUMNS = ["image", "mask", "tgt_boxes", "tgt_labels", "tgt_valid", "image_id", "orig_size", "img_size"]


class SampleTransform:
    """Map function: one MindRecord sample -> (image, boxes, labels, image_id, orig_size, img_size).

    Randomness comes from a ``numpy.random.Generator`` seeded with (seed, image_id, number of times this
    object has seen the image), so augmentations are reproducible from the seed however many workers run
    and in whatever order they pick samples, and differ from one epoch to the next.

    Outputs: image float32 [3, h, w]; boxes float32 [n, 4] normalized cxcywh; labels int32 [n];
    image_id int64 []; orig_size, img_size int32 [2] as (h, w). ``data_cfg["normalize"]`` picks the pixel
    normalization (``src.data.transforms.NORMALIZE_MODES``). ``keep_orientation``: random crops keep the
    image's orientation (distributed training, see ``src.data.group_sampler``).

    Raises:
        ValueError: undecodable image, or decoded size different from the recorded (height, width);
            the message names the image id and file.
    """

    def __init__(self, is_training: bool, data_cfg: dict, seed: int = 42, keep_orientation: bool = False):
        self.is_training = is_training
        self.transform = (build_train_transform(data_cfg, keep_orientation) if is_training
                          else build_eval_transform(data_cfg))
        self.seed = int(seed)
        self._visits: Dict[int, int] = {}
        self._lock = threading.Lock()

    def _rng(self, image_id: int) -> np.random.Generator:
        with self._lock:
            visit = self._visits.get(image_id, 0)
            self._visits[image_id] = visit + 1
        return np.random.default_rng([self.seed, image_id, visit])

    def decode(self, data, image_id, height, width, boxes, category_id, iscrowd, file_name, num_boxes):
        """One record -> (uint8 [H, W, 3] RGB, float32 [n, 4] xyxy pixels, int32 [n] labels), untransformed."""
        image_id, height, width = int(image_id), int(height), int(width)
        name = str(np.asarray(file_name))
        image = decode_image(data, image_id, name)
        if image.shape[:2] != (height, width):
            raise ValueError(f"image id {image_id} (file {name!r}) decodes to "
                             f"{image.shape[0]}x{image.shape[1]} (h x w) but its annotations are for "
                             f"{height}x{width}")
        n = int(num_boxes)  # rows past num_boxes are the writer's placeholder for images without boxes
        return (image, *prepare_target(np.reshape(boxes, (-1, 4))[:n], np.reshape(category_id, -1)[:n],
                                       np.reshape(iscrowd, -1)[:n], height, width))

    def __call__(self, data, image_id, height, width, boxes, category_id, iscrowd, file_name, num_boxes):
        image_id, height, width = int(image_id), int(height), int(width)
        if image_id == PADDED_IMAGE_ID:
            return (np.zeros((3, 1, 1), np.float32), np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                    np.int64(image_id), np.ones(2, np.int32), np.ones(2, np.int32))
        image, boxes, labels = self.decode(data, image_id, height, width, boxes, category_id, iscrowd, file_name,
                                           num_boxes)
        image, boxes, labels = self.transform(image, boxes, labels, self._rng(image_id))
        return (image, boxes, labels, np.int64(image_id), np.array([height, width], np.int32),
                np.array(image.shape[1:], np.int32))


def select_bucket(sizes: Sequence[Sequence[int]], buckets: Sequence[Sequence[int]], image_ids=None):
    """Smallest-area bucket (H, W) holding every (h, w) in ``sizes``; ties go to the earlier bucket.

    Raises:
        ValueError: an image is larger than every bucket; names its image id and size.
    """
    max_h = max(int(s[0]) for s in sizes)
    max_w = max(int(s[1]) for s in sizes)
    for bucket in sorted(buckets, key=lambda b: int(b[0]) * int(b[1])):
        if max_h <= bucket[0] and max_w <= bucket[1]:
            return int(bucket[0]), int(bucket[1])
    for i, s in enumerate(sizes):
        if not any(s[0] <= b[0] and s[1] <= b[1] for b in buckets):
            image = f"image id {int(image_ids[i])}" if image_ids is not None else f"image {i} of the batch"
            raise ValueError(f"{image} resized to {int(s[0])}x{int(s[1])} (h x w) fits no pad bucket "
                             f"{[list(b) for b in buckets]}; add a larger bucket to the data config")
    raise ValueError(f"batch of sizes {[list(map(int, s)) for s in sizes]} (max {max_h}x{max_w}) fits no "
                     f"single pad bucket {[list(b) for b in buckets]}; add a bucket of at least "
                     f"{max_h}x{max_w}")


class BatchPadder:
    """per_batch_map: pad images to a bucket, targets to ``max_boxes`` rows, build mask and validity.

    Inputs are the per-sample lists of ``SampleTransform``'s outputs; returns the arrays of
    ``BATCH_COLUMNS`` (see the module docstring). Follows detr ``nested_tensor_from_tensor_list`` (zero
    padding bottom/right, mask True on padding), with static shapes instead of the batch maximum.

    With ``step_buckets`` (distributed training), batch ``k`` of the epoch is padded to ``step_buckets[k]``,
    the bucket of its orientation group, identical on every rank, instead of the smallest that fits it.
    With ``buckets`` None the batch is padded to its largest height and width only (detr's own rule), so a batch of
    one image keeps the image's size (unpadded evaluation, ``eval.unpadded``).
    """

    def __init__(self, buckets: Optional[Sequence[Sequence[int]]], max_boxes: int, batch_size: Optional[int] = None,
                 step_buckets: Optional[Sequence[Sequence[int]]] = None):
        self.buckets = None if buckets is None else [tuple(int(v) for v in b) for b in buckets]
        self.max_boxes = int(max_boxes)
        self.batch_size = batch_size
        self.step_buckets = step_buckets
        self.truncated_images = 0

    def __call__(self, images, boxes, labels, image_ids, orig_sizes, img_sizes, batch_info=None):
        n = len(images)
        rows = max(n, self.batch_size or n)
        sizes = [im.shape[1:] for im in images]
        if self.buckets is None:
            height, width = max(int(size[0]) for size in sizes), max(int(size[1]) for size in sizes)
        elif self.step_buckets is None:
            height, width = select_bucket(sizes, self.buckets, image_ids)
        else:
            height, width = self.step_buckets[batch_info.get_batch_num()]
            for image_id, (h, w) in zip(image_ids, sizes):
                if h > height or w > width:
                    raise ValueError(f"image id {int(image_id)} resized to {h}x{w} (h x w) exceeds its group's "
                                     f"pad bucket {height}x{width}")
        image = np.zeros((rows, 3, height, width), np.float32)
        mask = np.zeros((rows, height, width), np.bool_)
        tgt_boxes = np.zeros((rows, self.max_boxes, 4), np.float32)
        tgt_labels = np.zeros((rows, self.max_boxes), np.int32)
        tgt_valid = np.zeros((rows, self.max_boxes), np.bool_)
        out_ids = np.full((rows,), PADDED_IMAGE_ID, np.int64)
        out_orig = np.tile(np.array([height, width], np.int32), (rows, 1))
        out_img = out_orig.copy()
        for i in range(n):
            h, w = images[i].shape[1:]
            image[i, :, :h, :w] = images[i]
            mask[i] = True
            mask[i, :h, :w] = False
            count = len(boxes[i])
            if count > self.max_boxes:
                self.truncated_images += 1
                logger.warning("image id %d has %d boxes; keeping the first max_boxes=%d (%d images "
                               "truncated so far)", int(image_ids[i]), count, self.max_boxes,
                               self.truncated_images)
                count = self.max_boxes
            tgt_boxes[i, :count] = np.asarray(boxes[i], np.float32).reshape(-1, 4)[:count]
            tgt_labels[i, :count] = np.asarray(labels[i], np.int32).reshape(-1)[:count]
            tgt_valid[i, :count] = True
            out_ids[i] = int(image_ids[i])
            out_orig[i] = orig_sizes[i]
            out_img[i] = img_sizes[i]
        return image, mask, tgt_boxes, tgt_labels, tgt_valid, out_ids, out_orig, out_img


def create_dataset(root, data_cfg: dict, which: str, mindrecord_dir, batch_size: int,
                   is_training: Optional[bool] = None, rank_id: int = 0, rank_size: int = 1, seed: int = 42,
                   shuffle: Optional[bool] = None, max_images: Optional[int] = None):
    """Build the batched pipeline of ``which`` ("train" | "val") for any model family's data config.

    Every model family takes the same road: ``src.data.sources.build_source`` (a COCO-format split, TFA few-shot
    files or VOC-format image sets, per ``data.dataset``, ``data.classes`` and ``data.few_shot_root``) -> one
    MindRecord set named after the source (``ensure_source_mindrecord``) -> :func:`_pipeline`. ``tgt_labels`` hold
    dataset category ids (the catalog's ids, ``src.data.catalog``); models map them to their labels.

    Args:
        root: dataset root (``--coco_path``): the COCO folder, or the VOCdevkit folder for VOC.
        data_cfg: the ``data`` config section.
        which: "train" or "val".
        mindrecord_dir: folder for the MindRecord sets.
        batch_size: images per batch (per rank).
        is_training: train transforms, shuffling by default, ``drop_remainder``; else eval transforms and a
            last batch filled with dummy rows. Defaults to ``which == "train"``.
        rank_id, rank_size: this rank and the number of ranks; each rank reads a disjoint 1/rank_size of the
            images. When the count does not divide, training repeats a few images while evaluation adds dummy
            samples (``image_id`` -1), so every image is evaluated exactly once. Distributed training (without
            Mosaic) deals batches by orientation group (``src.data.group_sampler``) so that step k is padded to
            the same bucket on every rank.
        seed: seeds the shuffle (``mindspore.dataset.config.set_seed``, a process-wide setting) and the
            augmentations (see ``SampleTransform``).
        shuffle: defaults to ``is_training``.
        max_images: keep only the first ``max_images`` rows of the MindRecord set (split among ranks),
            for quick runs.

    Returns:
        A ``mindspore.dataset.Dataset`` with columns ``BATCH_COLUMNS``.

    Raises:
        ValueError: bad ``which``, data keys, batch or rank arguments, or a source with no image.
        src.data.coco.CocoFormatError, src.data.voc.VocFormatError, src.data.few_shot.FewShotSplitError,
        src.data.catalog.CatalogError: invalid data or class list at conversion time (the message names the file).
    """
    if which not in ("train", "val"):
        raise ValueError(f"which must be 'train' or 'val', got {which!r}")
    is_training = which == "train" if is_training is None else is_training
    _check_batch_args(batch_size, rank_id, rank_size)
    source = build_source(root, data_cfg, which)
    files = ensure_source_mindrecord(source, mindrecord_dir)
    return _pipeline(files, read_stamp(mindrecord_dir, source.name)["num_images"], is_training, batch_size,
                     data_cfg, rank_id, rank_size, seed, shuffle, max_images)


def _check_batch_args(batch_size: int, rank_id: int, rank_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank_id < rank_size:
        raise ValueError(f"rank_id {rank_id} must be in [0, rank_size={rank_size})")


def _pipeline(files, num_images: int, is_training: bool, batch_size: int, data_cfg: dict, rank_id: int,
              rank_size: int, seed: int, shuffle: Optional[bool], max_images: Optional[int]):
    """MindDataset over ``files`` -> SampleTransform -> BatchPadder (see :func:`create_dataset`); in training
    with ``data_cfg["mosaic_prob"] > 0``, zipped with three partner readers and mapped by
    ``src.data.mosaic.MosaicSampleTransform`` instead."""
    shuffle = is_training if shuffle is None else shuffle
    workers = int(data_cfg["num_workers"])
    ds.config.set_seed(int(seed))
    num_padded = 0
    if not is_training and not shuffle and rank_size > 1 and max_images is None:
        num_padded = -num_images % rank_size
    grouped = is_training and rank_size > 1 and data_cfg["mosaic_prob"] <= 0
    step_buckets = None
    if num_padded:
        # Evaluation must see each image exactly once over all ranks; the default sharding would repeat
        # some images to even out the shards, so fill up with dummy samples instead.
        dataset = ds.MindDataset([str(f) for f in files], columns_list=RECORD_COLUMNS,
                                 num_parallel_workers=workers, shuffle=False, num_shards=rank_size,
                                 shard_id=rank_id, padded_sample=_padded_sample(), num_padded=num_padded)
    elif grouped:
        # Every rank pads step k to the same bucket, so the ranks compile the same graphs at the same steps.
        sizes = ds.MindDataset([str(f) for f in files], columns_list=["height", "width"], shuffle=False)
        hw = np.array([[int(h), int(w)] for h, w in sizes.create_tuple_iterator(output_numpy=True, num_epochs=1)])
        hw = hw[:max_images] if max_images is not None else hw
        plan = plan_group_batches(orientation_groups(hw[:, 0], hw[:, 1]), batch_size, rank_id, rank_size, seed)
        if data_cfg["fixed_size"] is None:
            short, long = max(data_cfg["train_scales"]), int(data_cfg["train_max_size"])
            step_buckets = [group_bucket(g, short, long, data_cfg["train_pad_buckets"]) for g in plan.step_groups]
        dataset = ds.MindDataset([str(f) for f in files], columns_list=RECORD_COLUMNS, num_parallel_workers=workers,
                                 sampler=ds.SubsetSampler(plan.indices.tolist()))
    else:
        dataset = ds.MindDataset([str(f) for f in files], columns_list=RECORD_COLUMNS,
                                 num_parallel_workers=workers,
                                 sampler=_make_sampler(shuffle, rank_id, rank_size, max_images))
    transform, columns = SampleTransform(is_training, data_cfg, seed, keep_orientation=grouped), RECORD_COLUMNS
    if is_training and data_cfg["mosaic_prob"] > 0:
        dataset, columns = add_mosaic_partners(dataset, files, RECORD_COLUMNS, max_images or num_images, workers,
                                               seed)
        transform = MosaicSampleTransform(transform, data_cfg["mosaic_prob"], data_cfg["mosaic_tile_size"])
    # Threads, not processes: SampleTransform's per-image visit counts must be shared by all workers.
    dataset = dataset.map(operations=transform, input_columns=columns, output_columns=SAMPLE_COLUMNS,
                          num_parallel_workers=workers, python_multiprocessing=False)
    buckets = data_cfg["train_pad_buckets"] if is_training else data_cfg["eval_pad_buckets"]
    padder = BatchPadder(buckets, data_cfg["max_boxes"], batch_size=None if is_training else batch_size,
                         step_buckets=step_buckets)
    return dataset.batch(batch_size, drop_remainder=is_training, per_batch_map=padder,
                         input_columns=SAMPLE_COLUMNS, output_columns=BATCH_COLUMNS,
                         num_parallel_workers=workers, python_multiprocessing=False)


def _padded_sample() -> dict:
    return {"image": b"", "image_id": PADDED_IMAGE_ID, "height": 1, "width": 1, "boxes": np.zeros(4, np.float32),
            "category_id": np.zeros(1, np.int32), "iscrowd": np.zeros(1, np.int32), "file_name": "",
            "num_boxes": 0}


def _make_sampler(shuffle: bool, rank_id: int, rank_size: int, max_images: Optional[int]):
    if max_images is None:
        if rank_size > 1:
            return ds.DistributedSampler(rank_size, rank_id, shuffle=shuffle)
        return ds.RandomSampler() if shuffle else ds.SequentialSampler()
    # A fixed subset (the first max_images rows), so quick runs see the same images every epoch; each rank
    # takes every rank_size-th of them.
    indices = list(range(int(max_images)))[rank_id::rank_size]
    return ds.SubsetRandomSampler(indices) if shuffle else ds.SubsetSampler(indices)
