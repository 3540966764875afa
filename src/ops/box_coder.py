"""Box regression encoding, following detectron2 ``Box2BoxTransform`` (``modeling/box_regression.py``).

For a source box (anchor or proposal) with width ``w``, height ``h`` and centre ``(x, y)`` and a target box
with ``w*, h*, x*, y*`` (widths are ``x1 - x0``, no +1), the deltas are::

    dx = wx * (x* - x) / w      dy = wy * (y* - y) / h
    dw = ww * log(w* / w)       dh = wh * log(h* / h)

with weights ``(wx, wy, ww, wh)`` = (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the R-CNN box head.
Decoding inverts this; ``dw``/``dh`` are clamped to ``log(1000 / 16)`` after dividing by the weights so that
``exp`` cannot overflow. Decoding accepts class-specific deltas [..., 4K] like detectron2 ``apply_deltas``.

All functions work on MindSpore tensors with any leading dimensions and are usable inside graph-mode Cells.
Boxes are float32 xyxy in input-image pixels.
"""

from __future__ import annotations

import math

from mindspore import Tensor, ops

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
SCALE_CLAMP = math.log(1000.0 / 16)
"""detectron2 ``_DEFAULT_SCALE_CLAMP``: the largest log size ratio a delta may express."""


def encode_boxes(src_boxes: Tensor, target_boxes: Tensor, weights=RPN_WEIGHTS) -> Tensor:
    """Deltas that turn ``src_boxes`` into ``target_boxes`` (detectron2 ``get_deltas``).

    Args:
        src_boxes: float32 [..., 4] xyxy with positive width and height.
        target_boxes: float32 [..., 4] xyxy, broadcastable with ``src_boxes``.
        weights: (wx, wy, ww, wh).

    Returns:
        float32 [..., 4] deltas (dx, dy, dw, dh).
    """
    wx, wy, ww, wh = weights
    src_w = src_boxes[..., 2] - src_boxes[..., 0]
    src_h = src_boxes[..., 3] - src_boxes[..., 1]
    src_x = src_boxes[..., 0] + 0.5 * src_w
    src_y = src_boxes[..., 1] + 0.5 * src_h
    tgt_w = target_boxes[..., 2] - target_boxes[..., 0]
    tgt_h = target_boxes[..., 3] - target_boxes[..., 1]
    tgt_x = target_boxes[..., 0] + 0.5 * tgt_w
    tgt_y = target_boxes[..., 1] + 0.5 * tgt_h
    dx = wx * (tgt_x - src_x) / src_w
    dy = wy * (tgt_y - src_y) / src_h
    dw = ww * ops.log(tgt_w / src_w)
    dh = wh * ops.log(tgt_h / src_h)
    return ops.stack([dx, dy, dw, dh], axis=-1)


def decode_boxes(deltas: Tensor, src_boxes: Tensor, weights=RPN_WEIGHTS, scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """Apply ``deltas`` to ``src_boxes`` (detectron2 ``apply_deltas``).

    Args:
        deltas: float32 [..., 4K]; K = 1 for class-agnostic deltas, K classes for the R-CNN head, laid out as
            (dx, dy, dw, dh) per class.
        src_boxes: float32 [..., 4] xyxy, leading dimensions matching ``deltas``.
        weights: (wx, wy, ww, wh).
        scale_clamp: upper clamp on dw / dh after dividing by the weights.

    Returns:
        float32 [..., 4K] xyxy boxes, one per class.
    """
    wx, wy, ww, wh = weights
    lead = deltas.shape[:-1]
    per_class = deltas.reshape(lead + (-1, 4))
    widths = (src_boxes[..., 2] - src_boxes[..., 0]).expand_dims(-1)
    heights = (src_boxes[..., 3] - src_boxes[..., 1]).expand_dims(-1)
    ctr_x = src_boxes[..., 0].expand_dims(-1) + 0.5 * widths
    ctr_y = src_boxes[..., 1].expand_dims(-1) + 0.5 * heights
    dx = per_class[..., 0] / wx
    dy = per_class[..., 1] / wy
    dw = ops.minimum(per_class[..., 2] / ww, scale_clamp)
    dh = ops.minimum(per_class[..., 3] / wh, scale_clamp)
    pred_x = dx * widths + ctr_x
    pred_y = dy * heights + ctr_y
    pred_w = ops.exp(dw) * widths
    pred_h = ops.exp(dh) * heights
    boxes = ops.stack([pred_x - 0.5 * pred_w, pred_y - 0.5 * pred_h, pred_x + 0.5 * pred_w,
                       pred_y + 0.5 * pred_h], axis=-1)
    return boxes.reshape(deltas.shape)
