"""Mosaic augmentation: four training images tiled 2x2 into one square canvas.

Follows csm-kr/detr_pytorch ``datasets/mosaic_transform.py`` (``load_mosaic``) and the ``RandomCrop`` / ``crop_``
of its ``datasets/transforms_.py``: with probability ``data.mosaic_prob`` (0.5 there) a training image is joined by
three other images of the training set; each of the four is randomly cropped (probability 0.5; each side kept at
50-100 %; boxes clipped to the crop, a box kept only if more than half its area survives; a crop that would keep
no box is refused), resized to ``tile x tile`` pixels (aspect ratio not kept; 400 there) and pasted in reading
order (the training image top-left, then top-right, bottom-left, bottom-right) into a ``2 tile x 2 tile`` canvas.
The result then goes through the usual training transform (flip, scales, ``data.fixed_size``).

Two deliberate differences: the re-implementation first resizes each image to short side 800 (long side at most
1333) before the crop; the crop fractions are relative, so this only adds an interpolation and is skipped here.
And boxes are clipped to their tile once more after the resize and those with no width or height left are dropped
(the re-implementation keeps them; the resize cannot make a kept box degenerate except through float rounding).

The three partner images come from three extra readers of the same MindRecord files, each with its own random
permutation of the images, zipped with the main reader (see :func:`add_mosaic_partners`): the main reader still
visits every image once per epoch, as the re-implementation's ``Dataset.__getitem__`` does, and the partners'
records are only decoded when a mosaic is drawn.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import mindspore.dataset as ds
import numpy as np

from src.data.transforms import resize_exact

NUM_TILES = 4


def random_tile_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                     p: float = 0.5, min_area_ratio: float = 0.5):
    """csm-kr/detr_pytorch ``RandomCrop``: crop a random region with probability ``p``.

    The region's width is drawn uniformly from ``[int(W / 2), W]`` and its height from ``[int(H / 2), H]``
    (inclusive), its top-left corner uniformly over valid positions. Boxes are shifted and clipped to the region;
    a box is kept when its clipped sides are positive and its clipped area exceeds ``min_area_ratio`` of its
    original area. If no box would be kept (always the case for an image without boxes) the crop is refused and
    the inputs come back unchanged.

    Args:
        image: uint8 [H, W, 3].
        boxes: float32 [n, 4] xyxy pixels inside the image, positive width and height.
        labels: int32 [n].
        rng: the sample's generator.

    Returns:
        ``(image, boxes, labels)`` in the same formats.
    """
    img_h, img_w = image.shape[:2]
    w = int(rng.integers(img_w // 2, img_w + 1))
    h = int(rng.integers(img_h // 2, img_h + 1))
    top = int(rng.integers(0, img_h - h + 1))
    left = int(rng.integers(0, img_w - w + 1))
    if rng.random() >= p:
        return image, boxes, labels
    shifted = boxes - np.array([left, top, left, top], np.float32)
    shifted[:, 0::2] = shifted[:, 0::2].clip(0, w)
    shifted[:, 1::2] = shifted[:, 1::2].clip(0, h)
    sides = shifted[:, 2:] - shifted[:, :2]
    original = boxes[:, 2:] - boxes[:, :2]
    keep = (sides > 0).all(axis=1) & (sides.prod(axis=1) / original.prod(axis=1) > min_area_ratio)
    if not keep.any():
        return image, boxes, labels
    return np.ascontiguousarray(image[top:top + h, left:left + w]), shifted[keep], labels[keep]


def mosaic(tiles: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], tile_size: int):
    """Paste four ``(image, boxes, labels)`` into a ``2 tile_size`` square canvas, in reading order.

    Each image is resized to ``tile_size x tile_size`` (PIL bilinear, aspect ratio not kept) and its xyxy pixel
    boxes are scaled and shifted by the tile's corner; boxes are clipped to their tile and those left without
    width or height are dropped.

    Args:
        tiles: four ``(uint8 [H, W, 3], float32 [n, 4] xyxy pixels, int32 [n])``.
        tile_size: side of one tile in pixels.

    Returns:
        ``(uint8 [2 t, 2 t, 3], float32 [m, 4] xyxy canvas pixels, int32 [m])`` with ``t = tile_size``.

    Raises:
        ValueError: not exactly four tiles.
    """
    if len(tiles) != NUM_TILES:
        raise ValueError(f"mosaic needs {NUM_TILES} images, got {len(tiles)}")
    t = int(tile_size)
    canvas = np.zeros((2 * t, 2 * t, 3), np.uint8)
    all_boxes, all_labels = [], []
    for k, (image, boxes, labels) in enumerate(tiles):
        oy, ox = (k // 2) * t, (k % 2) * t
        image, boxes = resize_exact(image, np.asarray(boxes, np.float32).reshape(-1, 4), (t, t))
        canvas[oy:oy + t, ox:ox + t] = image
        boxes = boxes.clip(0, t) + np.array([ox, oy, ox, oy], np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        all_boxes.append(boxes[keep])
        all_labels.append(np.asarray(labels, np.int32).reshape(-1)[keep])
    return canvas, np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_labels)


class MosaicSampleTransform:
    """Map function: a training record and three partner records -> one sample, a mosaic with ``prob``.

    Wraps a ``src.data.dataset.SampleTransform`` (training mode) and uses its decoding, its per-image generator
    (seeded from the seed, the main image's id and its visit count, so the draw is reproducible) and its training
    transform. Inputs are the record columns of the main image followed by those of the three partners; outputs
    and errors are ``SampleTransform``'s. ``orig_size`` is the main image's.

    Raises:
        ValueError: ``prob`` outside [0, 1] or ``tile_size`` not a positive integer (names the config key).
    """

    def __init__(self, sample_transform, prob: float, tile_size: int):
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"data.mosaic_prob must be in [0, 1], got {prob!r}")
        if not isinstance(tile_size, int) or tile_size < 1:
            raise ValueError(f"data.mosaic_tile_size must be a positive integer (pixels), got {tile_size!r}")
        self.sample = sample_transform
        self.prob = float(prob)
        self.tile_size = int(tile_size)

    def __call__(self, *columns):
        width = len(columns) // NUM_TILES
        records = [columns[k * width:(k + 1) * width] for k in range(NUM_TILES)]
        image_id, height, img_w = int(records[0][1]), int(records[0][2]), int(records[0][3])
        rng = self.sample._rng(image_id)
        image, boxes, labels = self.sample.decode(*records[0])
        if rng.random() < self.prob:
            tiles = [(image, boxes, labels)] + [self.sample.decode(*record) for record in records[1:]]
            image, boxes, labels = mosaic([random_tile_crop(*tile, rng) for tile in tiles], self.tile_size)
        image, boxes, labels = self.sample.transform(image, boxes, labels, rng)
        return (image, boxes, labels, np.int64(image_id), np.array([height, img_w], np.int32),
                np.array(image.shape[1:], np.int32))


def add_mosaic_partners(dataset, files, record_columns: Sequence[str], num_images: int, workers: int, seed: int):
    """Zip ``dataset`` (records in ``record_columns``) with three partner readers of ``files``.

    Partner ``k`` reads the first ``num_images`` records of ``files`` in its own random order (a permutation drawn
    from ``(seed, k)``, reshuffled every epoch), so the main reader's order and sharding are untouched; the
    partners are not sharded (any image of the set may join a mosaic).

    Returns:
        ``(zipped dataset, input column names)``: the main columns then each partner's, suffixed ``_p{k}``.
    """
    readers, columns = [dataset], list(record_columns)
    for k in range(1, NUM_TILES):
        order = np.random.default_rng([int(seed), k]).permutation(int(num_images)).tolist()
        names = [f"{c}_p{k}" for c in record_columns]
        partner = ds.MindDataset([str(f) for f in files], columns_list=list(record_columns),
                                 num_parallel_workers=workers, sampler=ds.SubsetRandomSampler(order))
        readers.append(partner.rename(input_columns=list(record_columns), output_columns=names))
        columns += names
    return ds.zip(tuple(readers)), columns
