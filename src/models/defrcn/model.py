"""DeFRCN detector: C4 ResNet, decoupled RPN and R-CNN branches, Res5 box head.

Follows er-muyue/DeFRCN ``defrcn/modeling/meta_arch/rcnn.py::GeneralizedRCNN``: res4 features are computed
once; the RPN reads ``affine_rpn(GDL(res4, RPN.BACKWARD_SCALE))`` and the box head reads
``affine_rcnn(GDL(res4, ROI_HEADS.BACKWARD_SCALE))`` (each only when its branch's ``ENABLE_DECOUPLE`` is set,
otherwise res4 itself; DeFRCN's configs set both); the freezing switches ``BACKBONE.FREEZE``, ``RPN.FREEZE``
and ``ROI_HEADS.FREEZE_FEAT`` (res5) are applied by ``requires_grad``. Attribute names follow detectron2 so
that checkpoint keys are unchanged:
``backbone.*``, ``proposal_generator.rpn_head.*``, ``roi_heads.res5.*``, ``roi_heads.box_predictor.*``,
``affine_rpn.*``, ``affine_rcnn.*`` (see :func:`src.models.defrcn.backbone.d2_to_mindspore_name`).

Input (prepared by the data side): float32 ``[B, 3, H, W]`` **BGR** 0-255 minus (103.53, 116.28, 123.675),
std 1, resized (detectron2: shortest side 800, longest <= 1333) and zero-padded bottom/right to a static
batch shape. Detections are in the coordinates of that resized input; scaling to the original image
is :class:`DetectorPostprocess` (detectron2 ``detector_postprocess``).

The training losses wrap this Cell in :class:`src.models.defrcn.losses.DeFRCNWithLoss`.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from src.models.defrcn.backbone import ResNetC4, build_res5
from src.models.defrcn.gdl import DecoupledAffine
from src.models.defrcn.roi_heads import FastRCNNInference, Res5ROIHeads
from src.models.defrcn.rpn import RPN
from src.ops.anchors import DEFAULT_RATIOS, DEFAULT_SIZES


class DeFRCN(nn.Cell):
    """Faster R-CNN C4 with DeFRCN's gradient-decoupled branches, returning static-shape detections.

    Args:
        num_classes: foreground classes C (60 COCO base, 80 gFSOD, 20 FSOD; 15/20/5 for VOC).
        depth, stem_out_channels, res2_out_channels, stride_in_1x1, freeze_at: see
            :class:`src.models.defrcn.backbone.ResNetC4` (R-101, 64, 256, True, 3 in DeFRCN).
        rpn_enable_decouple, rcnn_enable_decouple: use the GDL + affine block on that branch (DeFRCN
            ``RPN.ENABLE_DECOUPLE`` / ``ROI_HEADS.ENABLE_DECOUPLE``, True in every DeFRCN config).
        rpn_backward_scale: lambda of the RPN branch (0.0 in every DeFRCN config).
        rcnn_backward_scale: lambda of the R-CNN branch (0.75 base, 0.01 COCO / 0.001 VOC fine-tuning).
        freeze_backbone, freeze_rpn, freeze_roi_feat: DeFRCN ``BACKBONE.FREEZE``, ``RPN.FREEZE``,
            ``ROI_HEADS.FREEZE_FEAT`` (res5).
        anchor_sizes, anchor_ratios, rpn_nms_thresh, rpn_pre_nms_topk_{train,test}, rpn_post_nms_topk_{train,test}:
            see :class:`src.models.defrcn.rpn.RPN`.
        pooler_resolution, sampling_ratio, cls_dropout, dropout_ratio, pooler_max_grid: see
            :class:`src.models.defrcn.roi_heads.Res5ROIHeads`.
        score_thresh, nms_thresh, detections_per_image, max_candidates: see
            :class:`src.models.defrcn.roi_heads.FastRCNNInference`.

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]``, see the module docstring.
        image_sizes (Tensor[float32 or int32]): ``[B, 2]`` (height, width) of each unpadded resized image.

    Outputs:
        boxes (Tensor[float32]): ``[B, D, 4]`` xyxy pixels of the input image (zeros where invalid).
        scores (Tensor[float32]): ``[B, D]``, descending per image.
        labels (Tensor[int32]): ``[B, D]`` contiguous foreground class index ``0..C-1``.
        valid (Tensor[bool]): ``[B, D]``; D = ``detections_per_image`` (100).
    """

    def __init__(self, num_classes: int, depth=101, stem_out_channels: int = 64, res2_out_channels: int = 256,
                 stride_in_1x1: bool = True, freeze_at: int = 3, rpn_enable_decouple: bool = True,
                 rcnn_enable_decouple: bool = True,
                 rpn_backward_scale: float = 0.0, rcnn_backward_scale: float = 0.75, freeze_backbone: bool = False,
                 freeze_rpn: bool = False, freeze_roi_feat: bool = False, anchor_sizes=DEFAULT_SIZES,
                 anchor_ratios=DEFAULT_RATIOS, rpn_nms_thresh: float = 0.7, rpn_pre_nms_topk_train: int = 12000,
                 rpn_post_nms_topk_train: int = 2000, rpn_pre_nms_topk_test: int = 6000,
                 rpn_post_nms_topk_test: int = 1000, pooler_resolution: int = 7, sampling_ratio: int = 0,
                 cls_dropout: bool = False, dropout_ratio: float = 0.8, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_image: int = 100, max_candidates: int = 4000,
                 pooler_max_grid: int = 12):
        super().__init__()
        self.backbone = ResNetC4(depth, stem_out_channels, res2_out_channels, stride_in_1x1, freeze_at)
        channels = self.backbone.out_channels
        self.rpn_enable_decouple = rpn_enable_decouple
        self.rcnn_enable_decouple = rcnn_enable_decouple
        self.affine_rpn = DecoupledAffine(channels, rpn_backward_scale)
        self.affine_rcnn = DecoupledAffine(channels, rcnn_backward_scale)
        self.proposal_generator = RPN(channels, anchor_sizes, anchor_ratios, self.backbone.stride, 0.0,
                                      rpn_nms_thresh, rpn_pre_nms_topk_train, rpn_post_nms_topk_train,
                                      rpn_pre_nms_topk_test, rpn_post_nms_topk_test)
        res5 = build_res5(depth, res2_out_channels, stride_in_1x1)
        self.roi_heads = Res5ROIHeads(res5, res2_out_channels * 8, num_classes, pooler_resolution,
                                      1.0 / self.backbone.stride, sampling_ratio, cls_dropout, dropout_ratio,
                                      pooler_max_grid)
        self.inference = FastRCNNInference(num_classes, score_thresh, nms_thresh, detections_per_image,
                                           max_candidates)
        frozen = []
        if freeze_backbone:
            frozen.append(self.backbone)
        if freeze_rpn:
            frozen.append(self.proposal_generator)
        if freeze_roi_feat:
            frozen.append(self.roi_heads.res5)
        for cell in frozen:
            for param in cell.get_parameters():
                param.requires_grad = False

    def decoupled_features(self, image: Tensor):
        """res4 of ``image`` as seen by the RPN and by the box head: (rpn_features, rcnn_features), each
        float32 ``[B, C4, ceil(H/16), ceil(W/16)]``."""
        features = self.backbone(image)
        rpn_features = self.affine_rpn(features) if self.rpn_enable_decouple else features
        rcnn_features = self.affine_rcnn(features) if self.rcnn_enable_decouple else features
        return rpn_features, rcnn_features

    def construct(self, image: Tensor, image_sizes: Tensor):
        rpn_features, rcnn_features = self.decoupled_features(image)
        proposals, _, proposal_valid, _, _ = self.proposal_generator(rpn_features, image_sizes)
        class_logits, deltas = self.roi_heads(rcnn_features, proposals)
        return self.inference(class_logits, deltas, proposals, proposal_valid, image_sizes)


class DetectorPostprocess(nn.Cell):
    """Detections from resized-input pixels to original-image pixels (detectron2 ``detector_postprocess``).

    Scales x by ``orig_w / input_w`` and y by ``orig_h / input_h``, clips to the original image and drops boxes
    that became empty (width or height <= 0), as detectron2 does before evaluation.

    Inputs:
        boxes (Tensor[float32]): ``[B, D, 4]`` xyxy in resized-input pixels.
        valid (Tensor[bool]): ``[B, D]``.
        image_sizes (Tensor): ``[B, 2]`` (height, width) of the resized unpadded input.
        orig_sizes (Tensor): ``[B, 2]`` (height, width) of the original images.

    Outputs:
        boxes (Tensor[float32]): ``[B, D, 4]`` xyxy original pixels, zeros where invalid.
        valid (Tensor[bool]): ``[B, D]``, the input validity and non-empty after scaling (no longer
            necessarily a prefix).
    """

    def construct(self, boxes: Tensor, valid: Tensor, image_sizes: Tensor, orig_sizes: Tensor):
        sizes = image_sizes.astype(ms.float32)
        orig = orig_sizes.astype(ms.float32)
        scale_y = (orig[:, 0] / sizes[:, 0]).reshape(-1, 1)
        scale_x = (orig[:, 1] / sizes[:, 1]).reshape(-1, 1)
        x0 = ops.minimum(ops.maximum(boxes[..., 0] * scale_x, 0.0), orig[:, 1:2])
        y0 = ops.minimum(ops.maximum(boxes[..., 1] * scale_y, 0.0), orig[:, 0:1])
        x1 = ops.minimum(ops.maximum(boxes[..., 2] * scale_x, 0.0), orig[:, 1:2])
        y1 = ops.minimum(ops.maximum(boxes[..., 3] * scale_y, 0.0), orig[:, 0:1])
        keep = ops.logical_and(valid, ops.logical_and(x1 > x0, y1 > y0))
        out = ops.stack([x0, y0, x1, y1], axis=-1) * keep.astype(ms.float32).expand_dims(-1)
        return out, keep
