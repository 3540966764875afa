"""Focus-DETR / DINO inference post-processing: top-k over all (query, class) sigmoid scores.

Follows detrex ``projects/focus_detr/modeling/focus_detr.py::FOCUS_DETR.inference``: sigmoid of the final-layer
logits, one top-``num_select`` (300) over the flattened ``Q * K`` scores per image, ``label = index % K``,
``query = index // K``, the query's cxcywh box converted to xyxy and scaled by the original image ``(w, h)``.
"""

import mindspore as ms
from mindspore import nn, ops

from src.models.focus_detr.encoder import gather_tokens
from src.ops.box_ops import box_cxcywh_to_xyxy


class FocusPostProcess(nn.Cell):
    """Top-k detections from sigmoid class scores.

    Args:
        num_select: detections kept per image (300); capped by ``Q * K``.

    Inputs:
        pred_logits (Tensor[float32]): ``[B, Q, K]`` final-layer logits (no no-object column).
        pred_boxes (Tensor[float32]): ``[B, Q, 4]`` normalized cxcywh relative to the unpadded resized image.
        orig_sizes (Tensor[float32]): ``[B, 2]`` original image ``(h, w)`` in pixels.

    Outputs:
        tuple: ``scores [B, S]`` float32 sorted descending, ``labels [B, S]`` int32 contiguous class indices
        ``0..K-1`` (map to dataset category ids outside), ``boxes [B, S, 4]`` float32 xyxy in original pixels.
    """

    def __init__(self, num_select: int = 300):
        super().__init__()
        self.num_select = num_select

    def construct(self, pred_logits, pred_boxes, orig_sizes):
        batch, num_queries, num_classes = pred_logits.shape
        k = min(self.num_select, num_queries * num_classes)
        prob = ops.sigmoid(pred_logits).reshape(batch, num_queries * num_classes)
        scores, index = ops.topk(prob, k, dim=1, largest=True, sorted=True)
        index = index.astype(ms.int32)
        labels = index % num_classes
        query = index // num_classes
        boxes = box_cxcywh_to_xyxy(gather_tokens(pred_boxes, query))
        height = orig_sizes[:, 0]
        width = orig_sizes[:, 1]
        scale = ops.stack([width, height, width, height], axis=1)[:, None, :]
        return scores, labels, boxes * scale
