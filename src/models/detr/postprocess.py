"""Turn DETR outputs into scored, labelled boxes in original-image pixels.

Follows facebookresearch/detr ``models/detr.py::PostProcess``: softmax over classes, drop the "no object"
column, take the best remaining class per query, convert boxes to corners and scale by the original image
size. All ``Q`` queries are kept; thresholding / top-k is left to the caller.
"""

import mindspore as ms
from mindspore import nn, ops

from src.ops.box_ops import box_cxcywh_to_xyxy


class PostProcess(nn.Cell):
    """DETR post-processing (no parameters).

    Inputs:
        pred_logits (Tensor[float32]): ``[B, Q, K+1]``, or ``[L, B, Q, K+1]`` for every decoder layer (the
            last one is used); the last column is "no object".
        pred_boxes (Tensor[float32]): ``[B, Q, 4]`` (or ``[L, B, Q, 4]``) normalized ``(cx, cy, w, h)``
            relative to the unpadded resized image.
        orig_sizes (Tensor[float32]): ``[B, 2]`` original image size as ``(h, w)`` in pixels.

    Outputs:
        Tuple of ``scores`` (Tensor[float32] ``[B, Q]``, probability of the best real class), ``labels``
        (Tensor[int32] ``[B, Q]``, class id in ``0..K-1``) and ``boxes`` (Tensor[float32] ``[B, Q, 4]``,
        ``(x0, y0, x1, y1)`` in original-image pixels).
    """

    def construct(self, pred_logits, pred_boxes, orig_sizes):
        if pred_logits.ndim == 4:  # every decoder layer [L, B, Q, C]: the last one is the prediction
            pred_logits, pred_boxes = pred_logits[-1], pred_boxes[-1]
        prob = ops.softmax(pred_logits, axis=-1)[..., :-1]
        scores, labels = ops.max(prob, axis=-1)
        height = orig_sizes[:, 0]
        width = orig_sizes[:, 1]
        scale = ops.stack([width, height, width, height], axis=1)[:, None, :]  # [B, 1, 4]
        boxes = box_cxcywh_to_xyxy(pred_boxes) * scale
        return scores, labels.astype(ms.int32), boxes
