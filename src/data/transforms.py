"""NumPy/OpenCV detection transforms following facebookresearch/detr ``datasets/transforms.py``.

Every transform takes and returns ``(image, boxes, labels)``:

* ``image``: uint8 [H, W, 3] RGB (float32 [3, H, W] after ``Normalize``: RGB ImageNet-normalized by default,
  BGR 0-255 minus the Caffe mean in ``caffe_bgr`` mode),
* ``boxes``: float32 [n, 4] absolute-pixel **xyxy** (normalized **cxcywh** after ``Normalize``),
* ``labels``: int32 [n] raw COCO category ids,

and random transforms draw from an explicit ``numpy.random.Generator`` passed as ``rng`` (DETR uses the
global ``random`` module), so a pipeline is reproducible from a seed whatever the worker scheduling.

Resizing goes through PIL's bilinear filter, as torchvision's ``F.resize`` does for the PIL images DETR
feeds it: PIL widens the filter when shrinking (anti-aliasing) where ``cv2.INTER_LINEAR`` does not, and
evaluation parity with the published DETR numbers depends on identical pixels.
"""

from __future__ import annotations

import io
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_image(data, image_id=None, file_name: Optional[str] = None) -> np.ndarray:
    """Decode encoded image bytes to uint8 [H, W, 3] RGB.

    ``cv2.IMREAD_COLOR`` applies the EXIF orientation and turns grayscale, RGBA (alpha dropped) and CMYK
    JPEGs into three channels; PIL is the fallback for formats OpenCV cannot read.

    A truncated JPEG is an error too: OpenCV would decode it to a full-size image whose missing part is grey. A JPEG
    that does not end with its EOI marker (``FF D9``) is fully decoded by Pillow, which raises on truncation.

    Raises:
        ValueError: the bytes are not a decodable image or a truncated JPEG; the message names ``image_id`` and
            ``file_name``.
    """
    buffer = np.frombuffer(bytes(data), dtype=np.uint8)
    if buffer[:2].tobytes() == b"\xff\xd8" and not buffer.tobytes().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        _check_complete_jpeg(buffer, image_id, file_name)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is not None:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as e:  # PIL raises many exception types for bad data; all mean "cannot decode"
        raise ValueError(f"cannot decode image id {image_id} (file {file_name!r}): {e}. Replace the file and "
                         f"rebuild the MindRecord set.") from e


def _check_complete_jpeg(buffer: np.ndarray, image_id, file_name) -> None:
    """Decode a JPEG without an EOI marker at its end with Pillow; raise if the data stops early."""
    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as im:
            im.load()
    except Exception as e:  # PIL raises OSError("image file is truncated ...") and others for bad data
        raise ValueError(f"cannot decode image id {image_id} (file {file_name!r}): truncated or corrupt JPEG "
                         f"({e}). Replace the file and rebuild the MindRecord set.") from e


def prepare_target(boxes_xywh: np.ndarray, category_ids: np.ndarray, iscrowd: np.ndarray, height: int,
                   width: int, drop_crowd: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """COCO annotations -> (boxes float32 [n, 4] xyxy pixels clamped to the image, labels int32 [n]).

    Follows detr ``datasets/coco.py`` ``ConvertCocoPolysToMask``: crowd boxes dropped, xywh -> xyxy,
    clamped to [0, width] x [0, height], boxes with x1 <= x0 or y1 <= y0 removed.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4).copy()
    labels = np.asarray(category_ids, dtype=np.int32).reshape(-1)
    if drop_crowd:
        keep = np.asarray(iscrowd).reshape(-1) == 0
        boxes, labels = boxes[keep], labels[keep]
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]


def hflip(image: np.ndarray, boxes: np.ndarray):
    """Mirror left-right; xyxy boxes map to (W - x1, y0, W - x0, y1)."""
    width = image.shape[1]
    flipped = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([width, 0, width, 0],
                                                                                         np.float32)
    return np.ascontiguousarray(image[:, ::-1]), flipped.astype(np.float32)


def get_size_with_aspect_ratio(image_hw: Tuple[int, int], size: int, max_size: Optional[int] = None):
    """Output (h, w) with the short side ``size`` and the long side at most ``max_size``.

    Follows detr ``resize.get_size_with_aspect_ratio``: if the long side would exceed ``max_size``, the
    short side target becomes ``round(max_size * short / long)``; the long side is truncated
    (``int(size * long / short)``), and an image whose short side already equals ``size`` is unchanged.
    """
    h, w = image_hw
    if max_size is not None:
        min_original = float(min(h, w))
        max_original = float(max(h, w))
        if max_original / min_original * size > max_size:
            size = int(round(max_size * min_original / max_original))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def get_size_shortest_edge(image_hw: Tuple[int, int], size: int, max_size: Optional[int] = None):
    """Output (h, w) as detectron2's ``ResizeShortestEdge`` computes it (v0.3, used by DeFRCN).

    Scale the short side to ``size``; if the long side then exceeds ``max_size``, scale both sides down by
    ``max_size / long``; round each side half up (``int(x + 0.5)``). Differs from
    :func:`get_size_with_aspect_ratio` (DETR) by at most one pixel per side: DETR truncates the long side
    and, when capped, rounds the short side target first (e.g. 480x640 at 800: DETR 800x1066, detectron2
    800x1067).
    """
    h, w = image_hw
    scale = size / min(h, w)
    new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
    if max_size is not None and max(new_h, new_w) > max_size:
        cap = max_size / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return int(new_h + 0.5), int(new_w + 0.5)


RESIZE_ROUNDINGS = ("detr", "detectron2")
"""Output-size rules of :func:`resize`: ``detr`` (:func:`get_size_with_aspect_ratio`) or ``detectron2``
(:func:`get_size_shortest_edge`)."""


def resize(image: np.ndarray, boxes: np.ndarray, size: int, max_size: Optional[int] = None,
           rounding: str = "detr"):
    """Resize so the short side is ``size`` (long side <= ``max_size``); scale xyxy boxes to match.

    ``rounding`` picks the output-size rule (``RESIZE_ROUNDINGS``); both resample with PIL bilinear, as
    torchvision (DETR) and detectron2's ``ResizeTransform`` do for uint8 images.
    """
    h, w = image.shape[:2]
    if rounding == "detectron2":
        oh, ow = get_size_shortest_edge((h, w), size, max_size)
    else:
        oh, ow = get_size_with_aspect_ratio((h, w), size, max_size)
    if (oh, ow) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    scale = np.array([ow / w, oh / h, ow / w, oh / h], dtype=np.float32)
    return image, (boxes * scale).astype(np.float32)


def resize_exact(image: np.ndarray, boxes: np.ndarray, size_hw: Tuple[int, int]):
    """Resize to exactly ``size_hw`` = (h, w) pixels, aspect ratio not kept; scale xyxy pixel boxes to match.

    csm-kr/detr_pytorch's ``Resize((h, w))`` (torchvision ``F.resize`` on a PIL image: PIL bilinear).
    """
    h, w = image.shape[:2]
    oh, ow = int(size_hw[0]), int(size_hw[1])
    if (oh, ow) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    scale = np.array([ow / w, oh / h, ow / w, oh / h], dtype=np.float32)
    return image, (boxes * scale).astype(np.float32)


def crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, region: Tuple[int, int, int, int]):
    """Crop ``region`` = (top, left, height, width); boxes shifted, clamped, zero-area ones dropped.

    Follows detr ``transforms.crop``.
    """
    top, left, height, width = region
    image = image[top:top + height, left:left + width]
    shifted = boxes - np.array([left, top, left, top], dtype=np.float32)
    shifted[:, 0::2] = shifted[:, 0::2].clip(0, width)
    shifted[:, 1::2] = shifted[:, 1::2].clip(0, height)
    keep = (shifted[:, 2] > shifted[:, 0]) & (shifted[:, 3] > shifted[:, 1])
    return np.ascontiguousarray(image), shifted[keep].astype(np.float32), labels[keep]


class RandomHorizontalFlip:
    """Flip with probability ``p`` (detr ``RandomHorizontalFlip``)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if rng.random() < self.p:
            image, boxes = hflip(image, boxes)
        return image, boxes, labels


class RandomResize:
    """Resize the short side to a size drawn uniformly from ``sizes`` (detr ``RandomResize``; with
    ``rounding="detectron2"`` detectron2's ``ResizeShortestEdge(sizes, max_size, "choice")``).

    Raises:
        ValueError: an unknown ``rounding``.
    """

    def __init__(self, sizes: Sequence[int], max_size: Optional[int] = None, rounding: str = "detr"):
        if rounding not in RESIZE_ROUNDINGS:
            raise ValueError(f"resize rounding must be one of {RESIZE_ROUNDINGS}, got {rounding!r}")
        self.sizes = [int(s) for s in sizes]
        self.max_size = max_size
        self.rounding = rounding

    def __call__(self, image, boxes, labels, rng: Optional[np.random.Generator]):
        # A single size needs no draw, so the eval transform runs without a generator.
        size = self.sizes[0] if len(self.sizes) == 1 else self.sizes[int(rng.integers(len(self.sizes)))]
        image, boxes = resize(image, boxes, size, self.max_size, self.rounding)
        return image, boxes, labels


class FixedResize:
    """Resize every image to ``size_hw`` = (h, w) (csm-kr/detr_pytorch's last ``Resize((1024, 1024))``).

    A fixed input size gives graph mode one shape: one compiled graph, one pad bucket, no padding mask.

    Raises:
        ValueError: ``size_hw`` is not two positive integers (the message names ``data.fixed_size``).
    """

    def __init__(self, size_hw: Sequence[int]):
        if (not isinstance(size_hw, (list, tuple)) or len(size_hw) != 2
                or not all(isinstance(v, int) and v > 0 for v in size_hw)):
            raise ValueError(f"data.fixed_size must be null or [height, width] in pixels, got {size_hw!r}")
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))

    def __call__(self, image, boxes, labels, rng: Optional[np.random.Generator] = None):
        image, boxes = resize_exact(image, boxes, self.size_hw)
        return image, boxes, labels


class RandomSizeCrop:
    """Crop a random region with sides in [min_size, max_size] (detr ``RandomSizeCrop``).

    Width and height are drawn independently and uniformly (inclusive), capped by the image; the top-left
    corner is uniform over valid positions. An image side shorter than ``min_size`` is kept whole, where
    detr would fail; the default pipeline never hits this because it resizes the short side to >= 400 first.
    With ``keep_orientation`` a crop of the opposite orientation to the image (portrait from landscape or
    square, landscape from portrait) has its sides swapped, which keeps it inside the image; distributed
    training uses it so an image stays in its pad-bucket group (``src.data.group_sampler``).
    """

    def __init__(self, min_size: int, max_size: int, keep_orientation: bool = False):
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.keep_orientation = keep_orientation

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        img_h, img_w = image.shape[:2]
        w = int(rng.integers(min(self.min_size, img_w), min(img_w, self.max_size) + 1))
        h = int(rng.integers(min(self.min_size, img_h), min(img_h, self.max_size) + 1))
        if self.keep_orientation and (img_h > img_w) != (h > w) and h != w:
            h, w = w, h
        top = int(rng.integers(0, img_h - h + 1))
        left = int(rng.integers(0, img_w - w + 1))
        return crop(image, boxes, labels, (top, left, h, w))


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second`` (detr ``RandomSelect``)."""

    def __init__(self, first, second, p: float = 0.5):
        self.first = first
        self.second = second
        self.p = p

    def __call__(self, image, boxes, labels, rng: np.random.Generator):
        if rng.random() < self.p:
            return self.first(image, boxes, labels, rng)
        return self.second(image, boxes, labels, rng)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, boxes, labels, rng: Optional[np.random.Generator]):
        for t in self.transforms:
            image, boxes, labels = t(image, boxes, labels, rng)
        return image, boxes, labels


NORMALIZE_MODES = ("imagenet_rgb", "caffe_bgr")
"""Pixel normalizations :class:`Normalize` supports.

* ``imagenet_rgb`` (default, DETR / torchvision weights): RGB channels, ``(x / 255 - mean) / std`` with the
  ImageNet ``IMAGENET_MEAN`` / ``IMAGENET_STD``.
* ``caffe_bgr`` (detectron2 MSRA / Caffe2 weights, as DeFRCN's R-101 uses): BGR channels on the 0-255 scale,
  minus ``CAFFE_BGR_MEAN`` (detectron2 ``MODEL.PIXEL_MEAN``), standard deviation 1 (``MODEL.PIXEL_STD``).
"""

CAFFE_BGR_MEAN = (103.53, 116.28, 123.675)
"""Per-channel mean in B, G, R order on the 0-255 scale (detectron2's default ``PIXEL_MEAN``)."""


class Normalize:
    """uint8 HWC RGB -> float32 [3, H, W] normalized; xyxy pixels -> cxcywh normalized by (w, h).

    Follows detr ``ToTensor`` + ``Normalize`` (which also converts the boxes) in the default
    ``imagenet_rgb`` mode; ``caffe_bgr`` instead produces what detectron2 feeds an MSRA backbone (see
    ``NORMALIZE_MODES``). ``mean`` / ``std`` apply to ``imagenet_rgb`` only.

    Raises:
        ValueError: an unknown ``normalize`` mode.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize: str = "imagenet_rgb"):
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        self.mode = normalize
        if normalize == "caffe_bgr":
            self.mean = np.asarray(CAFFE_BGR_MEAN, np.float32).reshape(1, 1, 3)
            self.std = None
        else:
            self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
            self.std = np.asarray(std, np.float32).reshape(1, 1, 3)

    def __call__(self, image, boxes, labels, rng: Optional[np.random.Generator] = None):
        h, w = image.shape[:2]
        if self.mode == "caffe_bgr":
            out = image[:, :, ::-1].astype(np.float32) - self.mean
        else:
            out = (image.astype(np.float32) / 255.0 - self.mean) / self.std
        out = np.ascontiguousarray(out.transpose(2, 0, 1))  # [3, H, W]
        cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
        cxcywh = cxcywh / np.array([w, h, w, h], dtype=np.float32)
        return out, cxcywh.astype(np.float32).reshape(-1, 4), labels


def _fixed_size(data_cfg: dict) -> list:
    # data.fixed_size: null (default) or [h, w]; when set, every image ends at exactly that size.
    size = data_cfg["fixed_size"]
    return [] if size is None else [FixedResize(size)]


def build_train_transform(data_cfg: dict, keep_orientation: bool = False) -> Compose:
    """detr ``make_coco_transforms('train')``: flip, then either a multi-scale resize or resize-crop-resize.

    With ``data_cfg["random_crop"]`` False (DeFRCN) there is no crop branch: detectron2's training
    augmentation, ``ResizeShortestEdge(train_scales, train_max_size, "choice")`` then a horizontal flip with
    probability 0.5 (detectron2 ``build_augmentation``). Uses the keys train_scales, train_max_size,
    crop_scales / crop_min_size / crop_max_size (crop branch only), random_crop, hflip_prob
    (probability of the flip), resize_rounding (``RESIZE_ROUNDINGS``) and normalize
    (a ``NORMALIZE_MODES`` entry). With
    ``data_cfg["fixed_size"]`` = [h, w] a :class:`FixedResize` ends the geometric part, as csm-kr/detr_pytorch
    appends ``Resize((1024, 1024))`` to DETR's augmentation. ``keep_orientation`` is passed to
    :class:`RandomSizeCrop`.
    """
    scales = data_cfg["train_scales"]
    max_size = data_cfg["train_max_size"]
    rounding = data_cfg["resize_rounding"]
    flip = RandomHorizontalFlip(float(data_cfg["hflip_prob"]))
    if not data_cfg["random_crop"]:
        return Compose([RandomResize(scales, max_size=max_size, rounding=rounding), flip,
                        *_fixed_size(data_cfg), Normalize(normalize=data_cfg["normalize"])])
    return Compose([
        flip,
        RandomSelect(
            RandomResize(scales, max_size=max_size, rounding=rounding),
            Compose([
                RandomResize(data_cfg["crop_scales"], rounding=rounding),
                RandomSizeCrop(data_cfg["crop_min_size"], data_cfg["crop_max_size"], keep_orientation),
                RandomResize(scales, max_size=max_size, rounding=rounding),
            ]),
        ),
        *_fixed_size(data_cfg),
        Normalize(normalize=data_cfg["normalize"]),
    ])


def build_eval_transform(data_cfg: dict) -> Compose:
    """detr ``make_coco_transforms('val')``: short side ``eval_size``, long side at most ``eval_max_size``.

    ``data_cfg["normalize"]`` is a ``NORMALIZE_MODES`` entry; ``data_cfg["resize_rounding"]`` a
    ``RESIZE_ROUNDINGS`` entry (detectron2's test-time ``ResizeShortestEdge`` for DeFRCN). With
    ``data_cfg["fixed_size"]`` = [h, w] the image is then resized to exactly that size (csm-kr/detr_pytorch's
    test transform: short side 800, then ``Resize((1024, 1024))``).
    """
    return Compose([RandomResize([data_cfg["eval_size"]], max_size=data_cfg["eval_max_size"],
                                 rounding=data_cfg["resize_rounding"]),
                    *_fixed_size(data_cfg),
                    Normalize(normalize=data_cfg["normalize"])])
