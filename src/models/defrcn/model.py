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
is :class:`src.models.defrcn.postprocess.DetectorPostprocess` (detectron2 ``detector_postprocess``).

The training losses wrap this Cell in :class:`src.models.defrcn.losses.DeFRCNWithLoss`.
"""

from __future__ import annotations

from pathlib import Path

import mindspore as ms
from mindspore import Tensor, nn

from src.models.contract import DYNAMIC_IMAGE, DYNAMIC_MAP, Detector
from src.models.defrcn.backbone import ResNetC4, build_res5
from src.models.defrcn.gdl import DecoupledAffine
from src.models.defrcn.losses import LOSS_NAMES, DeFRCNLossNetwork, DeFRCNWithLoss
from src.models.defrcn.postprocess import DeFRCNPostprocess
from src.models.defrcn.roi_heads import FastRCNNInference, Res5ROIHeads
from src.models.defrcn.rpn import RPN
from src.ops.anchors import DEFAULT_RATIOS, DEFAULT_SIZES
from src.ops.box_ops import image_sizes_from_mask


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


class DeFRCNNetwork(nn.Cell):
    """``(image, mask) -> outputs`` for inference: DeFRCN with the image sizes taken from the mask.

    Args:
        model: the :class:`~src.models.defrcn.model.DeFRCN` Cell (its parameter names are kept, no prefix).

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]``, caffe-normalized BGR (``data.normalize: caffe_bgr``).
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.

    Outputs (the tuple :class:`DeFRCNPostprocess` takes):
        boxes float32 ``[B, D, 4]`` xyxy resized-input pixels; scores float32 ``[B, D]`` descending;
        labels int32 ``[B, D]`` contiguous class index; valid bool ``[B, D]``; image_sizes float32 ``[B, 2]``
        (h, w). D = ``detections_per_image``.
    """

    def __init__(self, model: DeFRCN):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, image: Tensor, mask: Tensor):
        image_sizes = image_sizes_from_mask(mask)
        boxes, scores, labels, valid = self.model(image, image_sizes)
        return boxes, scores, labels, valid, image_sizes


def build_detector(model_cfg: dict, loss_cfg: dict, catalog, distributed: bool = False, seed: int = 0) -> Detector:
    """The :class:`~src.models.contract.Detector` of a ``defrcn`` config, from its ``model`` and ``loss`` sections.

    Args:
        model_cfg: the config's ``model`` section.
        loss_cfg: the config's ``loss`` section.
        catalog: the dataset's :class:`src.data.catalog.Catalog`; its ids are the detector's classes, in
            contiguous order.
        distributed: unused (DeFRCN's losses are per-image averages).
        seed: seed of the RPN / ROI sampling (``train.seed``; ``DeFRCNWithLoss``).

    Raises:
        ValueError: an empty or repeated class list.
    """
    class_ids = [int(c) for c in catalog.ids]
    if not class_ids or len(set(class_ids)) != len(class_ids) or min(class_ids) < 0:
        raise ValueError(f"DeFRCN needs distinct non-negative class ids, got {class_ids}")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "name"}
    for key in ("anchor_sizes", "anchor_ratios"):
        model_cfg[key] = tuple(model_cfg[key])
    if isinstance(model_cfg["depth"], list):
        model_cfg["depth"] = tuple(model_cfg["depth"])
    model = DeFRCN(num_classes=len(class_ids), **model_cfg)
    with_loss = DeFRCNWithLoss(model, len(class_ids), seed=int(seed), **loss_cfg)
    # DeFRCNWithLoss stores the model as `net`, which prefixes every parameter name with "net."; restore the
    # detectron2 names that checkpoints, converters and the surgery use.
    model.update_parameters_name()
    return Detector(DeFRCNNetwork(model), DeFRCNPostprocess(class_ids), DeFRCNLossNetwork(with_loss, class_ids),
                    LOSS_NAMES)


def build_score_calibrator(cfg: dict, root, cache_root):
    """DeFRCN's evaluation hook: a :class:`src.models.defrcn.pcb_eval.PCBCalibrator` when ``eval.pcb_enable``, else
    None (see :class:`src.models.contract.ScoreCalibrator`).

    Args:
        cfg: the config (``data`` and the ``eval.pcb_*`` keys).
        root: dataset root (the support images are read from it).
        cache_root: the evaluation's cache folder; prototypes are cached in its ``pcb_prototypes/``.

    Raises:
        as :class:`src.models.defrcn.pcb_eval.PCBCalibrator`.
    """
    if not cfg["eval"]["pcb_enable"]:
        return None
    from src.models.defrcn.pcb_eval import PCBCalibrator

    return PCBCalibrator(cfg, root, Path(cache_root) / "pcb_prototypes")


def unpadded_parts(net) -> list:
    """The parts of DeFRCN's inference network that compile once for every image size (see
    :mod:`src.models.contract`): the res2-res4 trunk, the RPN head, the box head (ROIAlign + res5 on the fixed
    ``post_nms_topk_test`` proposals) and the fast R-CNN inference, four graphs; anchors and proposal selection,
    whose shapes follow the feature map's size, run eagerly.

    Args:
        net: the :class:`src.models.contract.InferenceNet` of :func:`build_detector`.

    Returns:
        four ``(cell, signature)`` pairs; the fast R-CNN inference has no signature (its shapes never change).
    """
    model = net.network.model
    proposals = Tensor(shape=[1, model.proposal_generator.post_nms_topk_test, 4], dtype=ms.float32)
    return [(model.backbone, (DYNAMIC_IMAGE,)), (model.proposal_generator.rpn_head, (DYNAMIC_MAP,)),
            (model.roi_heads, (DYNAMIC_MAP, proposals)), (model.inference, ())]
