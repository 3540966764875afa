"""C4 box head of DeFRCN: ROIAlignV2 on res4, res5, mean pooling, Fast R-CNN predictor and inference.

Follows er-muyue/DeFRCN ``defrcn/modeling/roi_heads/roi_heads.py::Res5ROIHeads`` and
``defrcn/modeling/roi_heads/fast_rcnn.py`` (``FastRCNNOutputLayers`` with the optional classifier dropout,
``fast_rcnn_inference_single_image``), themselves detectron2 v0.3 code with DeFRCN's settings: pooler
resolution 7 (not d2's 14), ROIAlignV2 at scale 1/16, Box2BoxTransform weights (10, 10, 5, 5), dropout with
drop probability 0.8 on the features entering ``cls_score`` only (not ``bbox_pred``) and only in training,
test score threshold 0.05, per-class NMS 0.5, 100 detections per image.

The head reads ``affine_rcnn(GDL(res4, ROI_HEADS.BACKWARD_SCALE))``, which
:class:`~src.models.defrcn.model.DeFRCN` computes. Class indices are detectron2's: foreground classes are
``0..C-1`` and the background logit is the LAST column (index C).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import Normal

from src.ops.box_coder import ROI_WEIGHTS, decode_boxes
from src.ops.box_ops import clip_boxes
from src.ops.nms import BatchedNMS
from src.ops.roi_align import ROIAlignV2


class FastRCNNOutputLayers(nn.Cell):
    """Class scores and class-specific box deltas from pooled features (DeFRCN ``FastRCNNOutputLayers``).

    Args:
        in_channels: feature size (2048 after res5).
        num_classes: foreground classes C.
        cls_dropout: apply dropout before ``cls_score`` in training (DeFRCN ``CLS_DROPOUT``; True when
            fine-tuning).
        dropout_ratio: drop probability (DeFRCN ``DROPOUT_RATIO`` 0.8).

    Parameters are named ``cls_score.{weight,bias}`` ``[C+1, in]`` and ``bbox_pred.{weight,bias}`` ``[4C, in]``
    as in detectron2, initialised normal(0.01) / normal(0.001) with zero bias.

    Inputs:
        x (Tensor[float32]): ``[R, in_channels]``.

    Outputs:
        class_logits (Tensor[float32]): ``[R, C+1]``, background last.
        deltas (Tensor[float32]): ``[R, 4C]``, (dx, dy, dw, dh) per class.
    """

    def __init__(self, in_channels: int, num_classes: int, cls_dropout: bool = False, dropout_ratio: float = 0.8):
        super().__init__()
        self.cls_score = nn.Dense(in_channels, num_classes + 1, weight_init=Normal(0.01), bias_init="zeros")
        self.bbox_pred = nn.Dense(in_channels, num_classes * 4, weight_init=Normal(0.001), bias_init="zeros")
        self.cls_dropout = cls_dropout
        # nn.Dropout is the identity unless the Cell is in training mode, which is what DeFRCN's
        # F.dropout(..., training=self.training) does (the earlier MindSpore port used ops.Dropout and so
        # dropped features at test time as well).
        self.dropout = nn.Dropout(p=dropout_ratio)

    def construct(self, x: Tensor):
        deltas = self.bbox_pred(x)
        if self.cls_dropout:
            x = self.dropout(x)
        return self.cls_score(x), deltas


class Res5ROIHeads(nn.Cell):
    """ROIAlignV2 + res5 + spatial mean + :class:`FastRCNNOutputLayers` (detectron2 ``Res5ROIHeads``).

    Args:
        res5: the res5 stage (:func:`src.models.defrcn.backbone.build_res5`), stored as ``res5`` so its keys are
            ``roi_heads.res5.*``.
        res5_out_channels: channels out of res5 (2048).
        num_classes: foreground classes C.
        pooler_resolution: ROIAlign output side (7 in DeFRCN).
        spatial_scale: 1 / feature stride (1/16).
        sampling_ratio: bilinear samples per bin side; 0 (DeFRCN's ``POOLER_SAMPLING_RATIO``) is detectron2's
            adaptive ``ceil(roi side / P)``, see :mod:`src.ops.roi_align`.
        pooler_max_grid: adaptive mode: the most samples per bin side (12: boxes up to 1344 px are exact).
        cls_dropout, dropout_ratio: see :class:`FastRCNNOutputLayers`.

    Inputs:
        features (Tensor[float32]): ``[B, C_in, H, W]`` res4 after ``affine_rcnn``.
        proposals (Tensor[float32]): ``[B, K, 4]`` xyxy input-image pixels (invalid slots may hold anything
            finite; their outputs are ignored downstream).

    Outputs:
        class_logits (Tensor[float32]): ``[B*K, C+1]``, image-major.
        deltas (Tensor[float32]): ``[B*K, 4C]``.
    """

    def __init__(self, res5: nn.Cell, res5_out_channels: int, num_classes: int, pooler_resolution: int = 7,
                 spatial_scale: float = 1.0 / 16, sampling_ratio: int = 0, cls_dropout: bool = False,
                 dropout_ratio: float = 0.8, pooler_max_grid: int = 12):
        super().__init__()
        self.pooler = ROIAlignV2(pooler_resolution, spatial_scale, sampling_ratio, pooler_max_grid)
        self.res5 = res5
        self.box_predictor = FastRCNNOutputLayers(res5_out_channels, num_classes, cls_dropout, dropout_ratio)

    def construct(self, features: Tensor, proposals: Tensor):
        pooled = self.pooler(features, proposals)
        box_features = self.res5(pooled).mean(axis=(2, 3))
        return self.box_predictor(box_features)


class FastRCNNInference(nn.Cell):
    """Static-shape ``fast_rcnn_inference``: softmax, per-class decode, clip, threshold, per-class NMS, top-k.

    Differences from detectron2, forced by static shapes: the surviving (proposal, class) pairs are first cut
    to the ``max_candidates`` highest scores before NMS (NMSWithMask needs a fixed input size and is quadratic
    in it); the result equals detectron2's whenever at most ``max_candidates`` pairs pass the score threshold.

    Args:
        num_classes: foreground classes C.
        score_thresh: keep pairs with probability > this (0.05).
        nms_thresh: per-class NMS IoU threshold (0.5).
        detections_per_image: output slots per image (100).
        max_candidates: pre-NMS cap on (proposal, class) pairs per image (>= ``detections_per_image``).

    Inputs:
        class_logits (Tensor[float32]): ``[B*K, C+1]``, background last.
        deltas (Tensor[float32]): ``[B*K, 4C]``.
        proposals (Tensor[float32]): ``[B, K, 4]`` xyxy input pixels.
        proposal_valid (Tensor[bool]): ``[B, K]``.
        image_sizes (Tensor): ``[B, 2]`` (height, width) of the unpadded input images.

    Outputs:
        boxes (Tensor[float32]): ``[B, D, 4]`` xyxy input-image pixels, clipped; zeros where invalid.
        scores (Tensor[float32]): ``[B, D]`` class probabilities, descending; 0 where invalid.
        labels (Tensor[int32]): ``[B, D]`` foreground class index in ``0..C-1``; 0 where invalid.
        valid (Tensor[bool]): ``[B, D]``, a prefix of each row.

    Raises:
        ValueError: if ``max_candidates < detections_per_image``.
    """

    def __init__(self, num_classes: int, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_image: int = 100, max_candidates: int = 4000):
        super().__init__()
        if max_candidates < detections_per_image:
            raise ValueError("max_candidates must be >= detections_per_image")
        self.num_classes = num_classes
        self.score_thresh = float(score_thresh)
        self.max_candidates = max_candidates
        self.detections_per_image = detections_per_image
        self.nms = BatchedNMS(nms_thresh, detections_per_image)

    def construct(self, class_logits: Tensor, deltas: Tensor, proposals: Tensor, proposal_valid: Tensor,
                  image_sizes: Tensor):
        batch, num = proposals.shape[0], proposals.shape[1]
        classes = self.num_classes
        probs = ops.softmax(class_logits, axis=-1).reshape(batch, num, classes + 1)
        boxes = decode_boxes(deltas.reshape(batch, num, classes * 4), proposals, ROI_WEIGHTS)
        boxes = boxes.reshape(batch, num, classes, 4)
        sizes = image_sizes.astype(ms.float32)
        boxes = clip_boxes(boxes, sizes[:, 0].reshape(batch, 1, 1), sizes[:, 1].reshape(batch, 1, 1))
        finite = ops.logical_and(ops.isfinite(boxes.reshape(batch, num, -1)).all(axis=-1),
                                 ops.isfinite(probs).all(axis=-1))
        row_ok = ops.logical_and(finite, proposal_valid)
        scores = probs[:, :, :classes]
        candidate = ops.logical_and(scores > self.score_thresh, row_ok.expand_dims(-1))
        # Pairs flattened proposal-major, like detectron2's nonzero() over [K, C].
        flat_scores = ops.select(candidate, scores, ops.zeros_like(scores)).reshape(batch, -1)
        flat_candidate = candidate.reshape(batch, -1)
        flat_boxes = boxes.reshape(batch, -1, 4)
        labels = ops.arange(classes).astype(ms.int32).reshape(1, 1, classes).broadcast_to((batch, num, classes))
        flat_labels = labels.reshape(batch, -1)
        top = min(self.max_candidates, num * classes)
        slots = max(top, self.detections_per_image)
        out_boxes, out_scores, out_labels, out_valid = [], [], [], []
        for i in range(batch):
            # A non-candidate has score 0 and every candidate > score_thresh >= 0, so candidates come first.
            top_scores, top_idx = ops.topk(flat_scores[i], top)
            top_valid = ops.gather(flat_candidate[i], top_idx, 0)
            top_boxes = ops.gather(flat_boxes[i], top_idx, 0)
            top_boxes = ops.select(top_valid.expand_dims(-1).broadcast_to(top_boxes.shape), top_boxes,
                                   ops.zeros_like(top_boxes))
            top_labels = ops.gather(flat_labels[i], top_idx, 0)
            if top < slots:
                # Fewer pairs than output slots: pad with non-candidates so NMS has enough rows.
                top_scores = ops.concat([top_scores, ops.zeros((slots - top,), ms.float32)])
                top_valid = ops.concat([top_valid, ops.zeros((slots - top,), ms.bool_)])
                top_boxes = ops.concat([top_boxes, ops.zeros((slots - top, 4), ms.float32)])
                top_labels = ops.concat([top_labels, ops.zeros((slots - top,), ms.int32)])
            keep, keep_valid = self.nms(top_boxes, top_scores, top_labels, top_valid)
            mask = keep_valid.astype(ms.float32)
            out_boxes.append(ops.gather(top_boxes, keep, 0) * mask.expand_dims(-1))
            out_scores.append(ops.gather(top_scores, keep, 0) * mask)
            out_labels.append(ops.gather(top_labels, keep, 0) * keep_valid.astype(ms.int32))
            out_valid.append(keep_valid)
        return ops.stack(out_boxes), ops.stack(out_scores), ops.stack(out_labels), ops.stack(out_valid)
