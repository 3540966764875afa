"""Static-shape non-maximum suppression over ``ops.NMSWithMask``.

Semantics follow torchvision ``nms`` / detectron2 ``batched_nms`` (greedy, in descending score order; a box
is dropped when its IoU with an already kept box is strictly greater than the threshold; IoU uses
``(x1 - x0) * (y1 - y0)`` areas with no +1). To keep shapes static, the result is a fixed number of index
slots plus a validity mask instead of a variable-length index list.

``NMSWithMask`` sorts by score internally on CPU/GPU but not on Ascend, and its returned indices refer to that
sorted order on CPU. The wrapper therefore sorts first and maps the kept positions back through its own
permutation, so the result does not depend on the backend. Exact score ties may be ordered differently from
torchvision.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops


class NMS(nn.Cell):
    """Greedy NMS with a fixed-size output.

    Args:
        iou_threshold: boxes with IoU > threshold against a higher-scored kept box are suppressed.
        max_output: number of output slots (static), <= the number of input boxes.

    Inputs:
        boxes: float32 [N, 4] xyxy.
        scores: float32 [N].
        valid: bool [N]; False rows (padding) are never kept and never suppress anything.

    Outputs:
        keep: int32 [max_output], indices into the input, highest score first; slots past the number of kept
            boxes hold index 0 and must be ignored.
        keep_valid: bool [max_output], True for real kept boxes (a prefix of the slots).
    """

    def __init__(self, iou_threshold: float, max_output: int):
        super().__init__()
        self.nms = ops.NMSWithMask(iou_threshold)
        self.max_output = max_output

    def construct(self, boxes: Tensor, scores: Tensor, valid: Tensor):
        num = boxes.shape[0]
        # Padding goes to the end of the order, where it can only be suppressed, never suppress.
        masked_scores = ops.select(valid, scores, ops.full_like(scores, -1.0e30))
        sorted_scores, order = ops.sort(masked_scores, descending=True)
        sorted_boxes = ops.gather(boxes, order, 0)
        sorted_valid = ops.gather(valid, order, 0)
        packed = ops.concat([sorted_boxes, sorted_scores.expand_dims(-1)], axis=1)
        _, sel_idx, sel_mask = self.nms(packed)
        # Kept slot i refers to sorted position sel_idx[i]; mark kept sorted positions.
        kept_sorted = ops.zeros((num,), ms.bool_)
        kept_sorted = ops.tensor_scatter_update(kept_sorted, sel_idx.expand_dims(-1), sel_mask)
        kept_sorted = ops.logical_and(kept_sorted, sorted_valid)
        # Rank key: kept positions earliest first; topk on it compacts them to the front in score order.
        rank = ops.cast(num - ops.arange(num), ms.float32)
        key = ops.select(kept_sorted, rank, ops.zeros_like(rank))
        top_key, top_pos = ops.topk(key, self.max_output)
        keep = ops.gather(order, top_pos, 0).astype(ms.int32)
        keep_valid = top_key > 0
        return ops.select(keep_valid, keep, ops.zeros_like(keep)), keep_valid


class BatchedNMS(nn.Cell):
    """Class-aware NMS: boxes of different classes never suppress each other (detectron2 ``batched_nms``).

    Uses the coordinate-offset trick: each box is shifted by ``label * (max coordinate + 1)`` so boxes of
    different classes cannot overlap, then plain :class:`NMS` runs once.

    Args:
        iou_threshold, max_output: see :class:`NMS`.

    Inputs:
        boxes: float32 [N, 4] xyxy (non-negative coordinates, as image boxes are).
        scores: float32 [N].
        labels: int32 [N] class indices.
        valid: bool [N].

    Outputs:
        keep int32 [max_output], keep_valid bool [max_output], as :class:`NMS`.
    """

    def __init__(self, iou_threshold: float, max_output: int):
        super().__init__()
        self.nms = NMS(iou_threshold, max_output)

    def construct(self, boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor):
        span = boxes.max() + 1.0
        offsets = ops.cast(labels, boxes.dtype).expand_dims(-1) * span
        return self.nms(boxes + offsets, scores, valid)
