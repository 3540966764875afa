"""Focus-DETR / DINO inference post-processing: top-k over all (query, class) sigmoid scores.

Follows detrex ``projects/focus_detr/modeling/focus_detr.py::FOCUS_DETR.inference``: sigmoid of the final-layer
logits, one top-``num_select`` (300) over the flattened ``Q * K`` scores per image, ``label = index % K``,
``query = index // K``, the query's cxcywh box converted to xyxy and scaled by the original image ``(w, h)``;
then detectron2's ``detector_postprocess`` (which detrex applies to every image): each box is clipped to
``[0, w] x [0, h]`` (``Boxes.clip``) and boxes with zero width or height after clipping are dropped
(``Boxes.nonempty``). Shapes stay static: a dropped detection keeps its slot with score 0 and label -1 (the zoo's
empty-slot marking, which the evaluators, ``postprocess.py`` and ``infer.py`` skip), and the slots are re-sorted
so the kept detections come first, in the reference's order.
"""

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.models.focus_detr.encoder import gather_tokens
from src.ops.box_ops import box_cxcywh_to_xyxy, clip_boxes


class FocusPostProcess(nn.Cell):
    """Top-k detections from sigmoid class scores, clipped to the image, empty boxes dropped.

    Args:
        num_select: detections kept per image (300); capped by ``Q * K``.

    Inputs:
        pred_logits (Tensor[float32]): ``[B, Q, K]`` final-layer logits (no no-object column).
        pred_boxes (Tensor[float32]): ``[B, Q, 4]`` normalized cxcywh relative to the unpadded resized image.
        orig_sizes (Tensor[float32]): ``[B, 2]`` original image ``(h, w)`` in pixels.

    Outputs:
        tuple: ``scores [B, S]`` float32 sorted descending, ``labels [B, S]`` int32 contiguous class indices
        ``0..K-1`` (map to dataset category ids outside), ``boxes [B, S, 4]`` float32 xyxy in original pixels,
        inside ``[0, w] x [0, h]``. Detections whose clipped box is empty come last, with score 0 and label -1.
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
        boxes = clip_boxes(boxes * scale, height[:, None], width[:, None])
        keep = ops.logical_and(boxes[..., 2] > boxes[..., 0], boxes[..., 3] > boxes[..., 1])
        scores = ops.select(keep, scores, ops.zeros_like(scores))
        labels = ops.select(keep, labels, ops.full_like(labels, -1))
        # Sigmoid scores are > 0, so the dropped (score 0) slots sort last; kept ones keep their order.
        scores, order = ops.topk(scores, k, dim=1, largest=True, sorted=True)
        order = order.astype(ms.int32)
        labels = ops.gather_elements(labels, 1, order)
        return scores, labels, gather_tokens(boxes, order)


class FocusDetectorPostProcess(nn.Cell):
    """The zoo contract's post-process: final decoder layer, top-k detections, raw COCO category ids.

    Args:
        num_select: detections kept per image (300).
        category_ids: dataset category id of each contiguous class index (``Catalog.ids``; the 80 COCO ids by default).

    Inputs:
        pred_logits (Tensor[float32]): ``[D, B, Q, K]``; pred_boxes (Tensor[float32]): ``[D, B, Q, 4]`` cxcywh;
        then the other network outputs (ignored) and last ``orig_sizes`` (Tensor[float32]) ``[B, 2]`` as ``(h, w)``.

    Outputs:
        tuple: ``scores [B, S]`` float32, ``labels [B, S]`` int32 category ids, ``boxes [B, S, 4]`` float32 xyxy in
        original pixels, clipped to the image; a dropped (empty after clipping) detection has score 0 and label -1.
    """

    def __init__(self, num_select: int = 300, category_ids=None):
        super().__init__()
        if category_ids is None:
            from src.data.catalog import coco_catalog

            category_ids = coco_catalog().ids
        self.topk = FocusPostProcess(num_select)
        self.category_ids = ms.Tensor(np.asarray(category_ids, np.int32))

    def construct(self, pred_logits, pred_boxes, *rest):
        scores, labels, boxes = self.topk(pred_logits[-1], pred_boxes[-1], rest[-1])
        category = ops.gather(self.category_ids, ops.maximum(labels, 0), 0)
        return scores, ops.select(labels >= 0, category, labels), boxes
