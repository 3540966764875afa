"""Bounding-box utilities on MindSpore tensors (graph-mode friendly).

Follows the box helpers of facebookresearch/detr ``util/box_ops.py``: format conversion, area, IoU and
generalized IoU (Rezatofighi et al., 2019). Differences from the reference, both for numerical safety:

* Areas used inside IoU/GIoU are computed from widths/heights clamped at 0, so an inverted box
  (x1 < x0 or y1 < y0) counts as empty instead of having a negative area. The reference asserts on such
  boxes ("degenerate boxes"); for well-formed boxes the results are identical.
* Denominators (union, enclosing area) are clamped from below by ``EPS``. Degenerate boxes (zero area)
  therefore give finite values (IoU 0, GIoU 0 when both boxes collapse to the same point) and finite
  gradients, instead of 0/0 = NaN. For boxes whose union exceeds ``EPS`` nothing changes.

All functions accept any number of leading batch dimensions. Boxes are float tensors whose last dimension
holds 4 coordinates, either ``(cx, cy, w, h)`` ("cxcywh") or ``(x0, y0, x1, y1)`` ("xyxy"), in any
consistent unit (DETR uses coordinates normalized to [0, 1]). :func:`image_sizes_from_mask` gives the image
sizes (height, width) in pixels that a padding mask leaves.
"""

import mindspore as ms
from mindspore import Tensor, ops

from src.layers.expand import expand_to

EPS = 1e-12
"""Lower bound on IoU/GIoU denominators; far below any real union in normalized coordinates."""


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert boxes from center format to corner format.

    Args:
        boxes: float tensor [..., 4] as (cx, cy, w, h).

    Returns:
        Float tensor [..., 4] as (x0, y0, x1, y1).
    """
    cx = boxes[..., 0]
    cy = boxes[..., 1]
    half_w = 0.5 * boxes[..., 2]
    half_h = 0.5 * boxes[..., 3]
    return ops.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert boxes from corner format to center format.

    Args:
        boxes: float tensor [..., 4] as (x0, y0, x1, y1).

    Returns:
        Float tensor [..., 4] as (cx, cy, w, h).
    """
    x0 = boxes[..., 0]
    y0 = boxes[..., 1]
    x1 = boxes[..., 2]
    y1 = boxes[..., 3]
    return ops.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes, ``(x1 - x0) * (y1 - y0)`` (negative for inverted boxes, as in the reference).

    Args:
        boxes: float tensor [..., 4] in xyxy format.

    Returns:
        Float tensor [...].
    """
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: Tensor, height, width) -> Tensor:
    """Clamp xyxy boxes to x in ``[0, width]`` and y in ``[0, height]`` (detectron2 ``Boxes.clip``).

    Args:
        boxes: float tensor [..., 4] in xyxy format, pixels.
        height, width: float32 scalars or tensors broadcastable to ``boxes[..., 0]``, in the same unit.

    Returns:
        Float tensor [..., 4]: the clipped boxes (a box wholly outside collapses to an empty one on the border).
    """
    x0 = ops.minimum(ops.maximum(boxes[..., 0], 0.0), width)
    y0 = ops.minimum(ops.maximum(boxes[..., 1], 0.0), height)
    x1 = ops.minimum(ops.maximum(boxes[..., 2], 0.0), width)
    y1 = ops.minimum(ops.maximum(boxes[..., 3], 0.0), height)
    return ops.stack([x0, y0, x1, y1], axis=-1)


def _clamped_area(boxes: Tensor) -> Tensor:
    """Area with negative extents clamped to zero, so inverted boxes are empty."""
    wh = ops.relu(boxes[..., 2:] - boxes[..., :2])
    return wh[..., 0] * wh[..., 1]


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor):
    """IoU of matching pairs of xyxy boxes (broadcasting over leading dimensions).

    Args:
        boxes1: float tensor [..., 4] in xyxy format.
        boxes2: float tensor [..., 4] in xyxy format, broadcastable with ``boxes1``.

    Returns:
        Tuple ``(iou, union)`` of float tensors with the broadcast leading shape; the union is the
        unclamped value, the IoU divides by ``max(union, EPS)``.
    """
    area1 = _clamped_area(boxes1)
    area2 = _clamped_area(boxes2)
    top_left = ops.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = ops.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.relu(bottom_right - top_left)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / ops.maximum(union, EPS)
    return iou, union


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of matching pairs of xyxy boxes (broadcasting over leading dimensions).

    ``GIoU = IoU - (C - union) / C`` where C is the area of the smallest enclosing box.

    Args:
        boxes1: float tensor [..., 4] in xyxy format.
        boxes2: float tensor [..., 4] in xyxy format, broadcastable with ``boxes1``.

    Returns:
        Float tensor with the broadcast leading shape, values in [-1, 1].
    """
    iou, union = elementwise_box_iou(boxes1, boxes2)
    top_left = ops.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = ops.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.relu(bottom_right - top_left)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / ops.maximum(enclosing, EPS)


def box_iou(boxes1: Tensor, boxes2: Tensor):
    """Pairwise IoU between two sets of xyxy boxes.

    Args:
        boxes1: float tensor [..., N, 4] in xyxy format.
        boxes2: float tensor [..., M, 4] in xyxy format (same leading dimensions as ``boxes1``).

    Returns:
        Tuple ``(iou, union)`` of float tensors [..., N, M].
    """
    return elementwise_box_iou(boxes1.expand_dims(-2), boxes2.expand_dims(-3))


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU between two sets of xyxy boxes.

    Args:
        boxes1: float tensor [..., N, 4] in xyxy format.
        boxes2: float tensor [..., M, 4] in xyxy format (same leading dimensions as ``boxes1``).

    Returns:
        Float tensor [..., N, M].
    """
    # Both sets are expanded to [..., N, M, 4] first: MindSpore 2.10's CPU element-wise kernels keep index tables
    # of the output's size for the life of a compiled graph when operand shapes differ (src/layers/expand.py).
    shape = boxes1.shape[:-1] + (boxes2.shape[-2], 4)
    return elementwise_generalized_box_iou(expand_to(boxes1.expand_dims(-2), shape),
                                           expand_to(boxes2.expand_dims(-3), shape))


def image_sizes_from_mask(mask: Tensor) -> Tensor:
    """(height, width) of the unpadded part of each image, float32 ``[B, 2]``.

    Args:
        mask: bool ``[B, H, W]``, True on padding (padding sits at the bottom and right).
    """
    real = ops.logical_not(mask)
    height = real.any(axis=2).astype(ms.float32).sum(axis=1)
    width = real.any(axis=1).astype(ms.float32).sum(axis=1)
    return ops.stack([height, width], axis=1)
