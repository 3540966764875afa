"""DeFRCN training losses with static shapes: anchor / proposal matching, sampling, RPN and Fast R-CNN losses.

Follows detectron2 v0.3 as DeFRCN runs it: ``modeling/matcher.py::Matcher`` (IoU intervals, low-quality
matches for the RPN), ``modeling/sampling.py::subsample_labels`` (random positives up to a fraction, the rest
negatives), ``proposal_generator/rpn.py`` (``label_and_sample_anchors`` with thresholds 0.3 / 0.7, 256 anchors
per image, positive fraction 0.5, all anchors kept (``BOUNDARY_THRESH`` -1), losses = sigmoid BCE and smooth-L1
with beta 0 (i.e. L1), both summed and divided by ``256 * batch``) and ``roi_heads/roi_heads.py``
(``label_and_sample_proposals``: ground truth appended to the proposals, IoU 0.5, 512 ROIs per image,
positive fraction 0.25) with ``roi_heads/fast_rcnn.py`` (softmax cross-entropy averaged over the sampled ROIs,
class-specific L1 box loss with weights (10, 10, 5, 5) summed over foreground ROIs and divided by the number
of sampled ROIs).

Ground truth comes padded: ``gt_boxes`` float32 ``[B, G, 4]`` xyxy input-image pixels, ``gt_classes`` int32
``[B, G]`` contiguous foreground index ``0..C-1``, ``gt_valid`` bool ``[B, G]``. Padded rows never match.
Random sampling draws keys from a stateful ``ops.UniformReal`` so each call samples afresh, as detectron2's
``randperm`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from src.ops.box_coder import ROI_WEIGHTS, RPN_WEIGHTS, encode_boxes
from src.ops.box_ops import box_cxcywh_to_xyxy, box_iou, image_sizes_from_mask

if TYPE_CHECKING:
    from src.models.defrcn.model import DeFRCN


def match_boxes(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor):
    """IoU of every box with every valid ground-truth box, best match per box.

    Args:
        gt_boxes: float32 [B, G, 4] xyxy. gt_valid: bool [B, G]. boxes: float32 [B, N, 4] xyxy.

    Returns:
        iou: float32 [B, G, N], -1 in the rows of padded ground truth.
        matched_vals: float32 [B, N] best IoU (-1 when the image has no ground truth).
        matches: int32 [B, N] index of the best ground truth.
    """
    iou, _ = box_iou(gt_boxes, boxes)
    iou = ops.select(gt_valid.expand_dims(-1).broadcast_to(iou.shape), iou, ops.full_like(iou, -1.0))
    matches = ops.argmax(iou, dim=1).astype(ms.int32)
    return iou, iou.max(axis=1), matches


def anchor_labels(iou: Tensor, matched_vals: Tensor, gt_valid: Tensor, thresholds=(0.3, 0.7)):
    """detectron2 ``Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)`` labels.

    Args:
        iou, matched_vals: from :func:`match_boxes`. gt_valid: bool [B, G].
        thresholds: (low, high); IoU < low is background, >= high foreground, in between ignored.

    Returns:
        int32 [B, N]: 1 foreground, 0 background, -1 ignored. Each valid ground truth also marks as foreground
        every box whose IoU with it equals that ground truth's best IoU (low-quality matches).
    """
    low, high = thresholds
    labels = ops.full(matched_vals.shape, -1, dtype=ms.int32)
    labels = ops.select(matched_vals < low, ops.zeros_like(labels), labels)
    labels = ops.select(matched_vals >= high, ops.ones_like(labels), labels)
    best_per_gt = iou.max(axis=2, keepdims=True)
    is_best = ops.logical_and(iou == best_per_gt, gt_valid.expand_dims(-1)).any(axis=1)
    return ops.select(is_best, ops.ones_like(labels), labels)


def _random_rank(mask: Tensor, noise: Tensor) -> Tensor:
    # Rank (0 = first) of each True entry in a random order of the True entries; False entries rank last.
    key = ops.select(mask, noise, ops.full_like(noise, -1.0))
    order = ops.argsort(key, axis=-1, descending=True)
    return ops.argsort(order.astype(ms.float32), axis=-1).astype(ms.int32)


def subsample_labels(positive: Tensor, negative: Tensor, num_samples: int, positive_fraction: float,
                     noise_pos: Tensor, noise_neg: Tensor):
    """detectron2 ``subsample_labels`` with masks instead of index lists.

    Args:
        positive, negative: bool [B, N] candidate masks (disjoint).
        num_samples: samples per image (256 RPN, 512 R-CNN).
        positive_fraction: cap on the positive share (0.5 RPN, 0.25 R-CNN).
        noise_pos, noise_neg: float32 [B, N] uniform noise defining the random choice.

    Returns:
        (pos_selected, neg_selected): bool [B, N] with at most ``int(num_samples * positive_fraction)``
        positives per image and ``num_samples - #positives`` negatives at most.
    """
    num_pos = ops.minimum(positive.astype(ms.int32).sum(axis=-1, keepdims=True),
                          int(num_samples * positive_fraction))
    num_neg = ops.minimum(negative.astype(ms.int32).sum(axis=-1, keepdims=True), num_samples - num_pos)
    pos_selected = ops.logical_and(positive, _random_rank(positive, noise_pos) < num_pos)
    neg_selected = ops.logical_and(negative, _random_rank(negative, noise_neg) < num_neg)
    return pos_selected, neg_selected


def _l1_or_smooth_l1(diff: Tensor, beta: float) -> Tensor:
    absolute = ops.abs(diff)
    if beta < 1e-5:
        return absolute
    return ops.select(absolute < beta, 0.5 * absolute * absolute / beta, absolute - 0.5 * beta)


def _gather_rows(values: Tensor, index: Tensor, depth: int) -> Tensor:
    # values [B, G, D], index [B, N] -> [B, N, D] via a one-hot product (no batched gather needed).
    one_hot = ops.one_hot(index, depth, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
    return ops.bmm(one_hot, values)


class RPNLoss(nn.Cell):
    """detectron2 RPN losses for one feature level.

    Args:
        batch_size_per_image: anchors sampled per image (256).
        positive_fraction: 0.5.
        iou_thresholds: (0.3, 0.7).
        smooth_l1_beta: 0 (pure L1) in DeFRCN.
        seed: seed of the sampling noise.

    Inputs:
        anchors: float32 [N, 4] xyxy. logits: float32 [B, N]. deltas: float32 [B, N, 4].
        gt_boxes, gt_valid: see the module docstring.

    Outputs:
        (loss_rpn_cls, loss_rpn_loc): float32 scalars, each a sum over the sampled anchors divided by
        ``batch_size_per_image * B``.
    """

    def __init__(self, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 iou_thresholds=(0.3, 0.7), smooth_l1_beta: float = 0.0, seed: int = 0):
        super().__init__()
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.iou_thresholds = tuple(iou_thresholds)
        self.beta = float(smooth_l1_beta)
        self.uniform = ops.UniformReal(seed=seed, seed2=1)

    def construct(self, anchors: Tensor, logits: Tensor, deltas: Tensor, gt_boxes: Tensor, gt_valid: Tensor):
        batch, num = logits.shape
        all_anchors = anchors.expand_dims(0).broadcast_to((batch, num, 4))
        iou, matched_vals, matches = match_boxes(gt_boxes, gt_valid, all_anchors)
        labels = anchor_labels(iou, matched_vals, gt_valid, self.iou_thresholds)
        positive = labels == 1
        pos_sel, neg_sel = subsample_labels(positive, labels == 0, self.batch_size_per_image,
                                            self.positive_fraction, self.uniform((batch, num)),
                                            self.uniform((batch, num)))
        matched_gt = _gather_rows(gt_boxes, matches, gt_boxes.shape[1])
        # Non-positive anchors regress to themselves so the encoding never takes log(0).
        pos_box = pos_sel.expand_dims(-1).broadcast_to(matched_gt.shape)
        targets = ops.stop_gradient(encode_boxes(all_anchors, ops.select(pos_box, matched_gt, all_anchors),
                                                 RPN_WEIGHTS))
        normalizer = float(self.batch_size_per_image * batch)
        sampled = ops.logical_or(pos_sel, neg_sel).astype(ms.float32)
        target_obj = pos_sel.astype(ms.float32)
        bce = ops.relu(logits) - logits * target_obj + ops.log1p(ops.exp(-ops.abs(logits)))
        loss_cls = (bce * sampled).sum() / normalizer
        loc = _l1_or_smooth_l1(deltas - targets, self.beta).sum(axis=-1)
        loss_loc = (loc * pos_sel.astype(ms.float32)).sum() / normalizer
        return loss_cls, loss_loc


class ROISampler(nn.Cell):
    """detectron2 ``label_and_sample_proposals``: append ground truth, match at IoU 0.5, sample 512 ROIs.

    Args:
        num_classes: foreground classes C (background label = C).
        batch_size_per_image: 512. positive_fraction: 0.25. iou_threshold: 0.5. seed: sampling seed.

    Inputs:
        proposals: float32 [B, P, 4]. proposal_valid: bool [B, P]. gt_boxes, gt_classes, gt_valid: see the
        module docstring.

    Outputs (S = min(batch_size_per_image, P + G) static slots, sampled foreground first):
        rois float32 [B, S, 4]; classes int32 [B, S] (C = background); gt_boxes float32 [B, S, 4] matched
        ground truth (the ROI itself for background); valid bool [B, S]; foreground bool [B, S].
    """

    def __init__(self, num_classes: int, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 iou_threshold: float = 0.5, seed: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.iou_threshold = float(iou_threshold)
        self.uniform = ops.UniformReal(seed=seed, seed2=2)

    def construct(self, proposals: Tensor, proposal_valid: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                  gt_valid: Tensor):
        boxes = ops.concat([ops.stop_gradient(proposals), gt_boxes], axis=1)
        valid = ops.concat([proposal_valid, gt_valid], axis=1)
        batch, num = boxes.shape[0], boxes.shape[1]
        num_gt = gt_boxes.shape[1]
        _, matched_vals, matches = match_boxes(gt_boxes, gt_valid, boxes)
        foreground = ops.logical_and(valid, matched_vals >= self.iou_threshold)
        background = ops.logical_and(valid, matched_vals < self.iou_threshold)
        pos_sel, neg_sel = subsample_labels(foreground, background, self.batch_size_per_image,
                                            self.positive_fraction, self.uniform((batch, num)),
                                            self.uniform((batch, num)))
        slots = min(self.batch_size_per_image, num)
        noise = self.uniform((batch, num))
        key = pos_sel.astype(ms.float32) * 2.0 + neg_sel.astype(ms.float32) + noise * 0.5
        key = ops.select(ops.logical_or(pos_sel, neg_sel), key, ops.zeros_like(key))
        top_key, top_idx = ops.topk(key, slots)
        matched_cls = _gather_rows(gt_classes.astype(ms.float32).expand_dims(-1), matches, num_gt)[..., 0]
        classes = ops.select(foreground, ops.round(matched_cls).astype(ms.int32),
                             ops.full(foreground.shape, self.num_classes, dtype=ms.int32))
        matched_gt = _gather_rows(gt_boxes, matches, num_gt)
        fg_box = foreground.expand_dims(-1).broadcast_to(matched_gt.shape)
        matched_gt = ops.select(fg_box, matched_gt, boxes)
        rois = _gather_rows(boxes, top_idx.astype(ms.int32), num)
        roi_gt = _gather_rows(matched_gt, top_idx.astype(ms.int32), num)
        roi_classes = ops.gather_elements(classes, 1, top_idx.astype(ms.int32))
        roi_fg = ops.gather_elements(foreground.astype(ms.int32), 1, top_idx.astype(ms.int32)) > 0
        roi_valid = top_key > 0
        return (ops.stop_gradient(rois), roi_classes, ops.stop_gradient(roi_gt), roi_valid,
                ops.logical_and(roi_fg, roi_valid))


class FastRCNNLoss(nn.Cell):
    """Softmax cross-entropy and class-specific box loss of the sampled ROIs (detectron2 ``FastRCNNOutputs``).

    Args:
        num_classes: C. smooth_l1_beta: 0 (L1) in DeFRCN.

    Inputs:
        class_logits float32 [B*S, C+1]; deltas float32 [B*S, 4C]; rois, classes, gt_boxes, valid, foreground
        from :class:`ROISampler`.

    Outputs:
        (loss_cls, loss_box_reg): float32 scalars; both are divided by the number of sampled ROIs.
    """

    def __init__(self, num_classes: int, smooth_l1_beta: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.beta = float(smooth_l1_beta)

    def construct(self, class_logits: Tensor, deltas: Tensor, rois: Tensor, classes: Tensor, gt_boxes: Tensor,
                  valid: Tensor, foreground: Tensor):
        classes = classes.reshape(-1)
        valid = valid.reshape(-1).astype(ms.float32)
        fg = foreground.reshape(-1).astype(ms.float32)
        count = ops.maximum(valid.sum(), 1.0)
        log_probs = ops.log_softmax(class_logits, axis=-1)
        one_hot = ops.one_hot(classes, self.num_classes + 1, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
        loss_cls = -((log_probs * one_hot).sum(axis=-1) * valid).sum() / count
        per_class = deltas.reshape(-1, self.num_classes, 4)
        pick = one_hot[:, :self.num_classes].expand_dims(-1)
        pred = (per_class * pick).sum(axis=1)
        # Background and empty slots get a unit box on both sides: zero-size ROIs would make the encoding
        # divide by zero, and NaN * 0 is still NaN.
        is_fg = (fg > 0).expand_dims(-1).broadcast_to((fg.shape[0], 4))
        unit = ops.zeros((fg.shape[0], 4), ms.float32) + Tensor([0.0, 0.0, 1.0, 1.0], ms.float32)
        safe_rois = ops.select(is_fg, rois.reshape(-1, 4), unit)
        safe_gt = ops.select(is_fg, gt_boxes.reshape(-1, 4), unit)
        targets = ops.stop_gradient(encode_boxes(safe_rois, safe_gt, ROI_WEIGHTS))
        box = _l1_or_smooth_l1(ops.select(is_fg, pred - targets, ops.zeros_like(pred)), self.beta).sum(axis=-1)
        return loss_cls, box.sum() / count


class DeFRCNWithLoss(nn.Cell):
    """Training graph of :class:`~src.models.defrcn.model.DeFRCN`: the four detectron2 losses.

    Call ``set_train(True)`` so the RPN uses its training top-k and the classifier dropout is active.

    Args:
        net: the DeFRCN Cell (its parameters are the ones trained).
        num_classes: C.
        rpn_batch_size_per_image, rpn_positive_fraction, roi_batch_size_per_image, roi_positive_fraction,
        seed: sampling settings (256, 0.5, 512, 0.25).

    Inputs:
        image float32 [B, 3, H, W]; image_sizes [B, 2] (h, w); gt_boxes, gt_classes, gt_valid as in the module
        docstring.

    Outputs:
        loss: float32 scalar, the unweighted sum (detectron2 loss weights are all 1).
        loss_terms: float32 [4] = (loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg).
    """

    def __init__(self, net: DeFRCN, num_classes: int, rpn_batch_size_per_image: int = 256,
                 rpn_positive_fraction: float = 0.5, roi_batch_size_per_image: int = 512,
                 roi_positive_fraction: float = 0.25, seed: int = 0):
        super().__init__()
        self.net = net
        self.rpn_loss = RPNLoss(rpn_batch_size_per_image, rpn_positive_fraction, seed=seed)
        self.sampler = ROISampler(num_classes, roi_batch_size_per_image, roi_positive_fraction, seed=seed)
        self.roi_loss = FastRCNNLoss(num_classes)

    def construct(self, image: Tensor, image_sizes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                  gt_valid: Tensor):
        net = self.net
        rpn_features, rcnn_features = net.decoupled_features(image)
        proposals, _, proposal_valid, logits, deltas = net.proposal_generator(rpn_features, image_sizes)
        anchors = net.proposal_generator.anchors(rpn_features.shape[2], rpn_features.shape[3])
        loss_rpn_cls, loss_rpn_loc = self.rpn_loss(anchors, logits, deltas, gt_boxes, gt_valid)
        rois, classes, roi_gt, roi_valid, roi_fg = self.sampler(proposals, proposal_valid, gt_boxes, gt_classes,
                                                                gt_valid)
        class_logits, roi_deltas = net.roi_heads(rcnn_features, rois)
        loss_cls, loss_box = self.roi_loss(class_logits, roi_deltas, rois, classes, roi_gt, roi_valid, roi_fg)
        terms = ops.stack([loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box])
        return terms.sum(), terms


LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")
"""Names of DeFRCNWithLoss's terms, in its order (detectron2's loss dict keys)."""


class DeFRCNLossNetwork(nn.Cell):
    """``(image, mask, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms)``: DeFRCN's four training losses.

    Args:
        with_loss: :class:`~src.models.defrcn.losses.DeFRCNWithLoss` around the DeFRCN Cell.
        class_ids: dataset category id of each contiguous class index.

    Inputs (SPEC tensor conventions):
        image float32 ``[B, 3, H, W]``; mask bool ``[B, H, W]``; tgt_boxes float32 ``[B, N, 4]`` normalized cxcywh
        of the unpadded resized image; tgt_labels int32 ``[B, N]`` dataset category ids; tgt_valid bool ``[B, N]``.

    Outputs:
        loss float32 scalar (sum of the terms); loss_terms float32 ``[4]`` in :data:`LOSS_NAMES` order.
    """

    def __init__(self, with_loss: DeFRCNWithLoss, class_ids: Sequence[int]):
        super().__init__(auto_prefix=False)
        self.with_loss = with_loss
        ids = np.asarray(class_ids, np.int64)
        # One slot past the largest id stays -1: every larger id is clipped onto it and so ignored.
        table = np.full(int(ids.max()) + 2, -1, np.int32)
        table[ids] = np.arange(len(ids), dtype=np.int32)
        self.index_of_id = Tensor(table)
        self.max_id = int(ids.max()) + 1

    def construct(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        image_sizes = image_sizes_from_mask(mask)
        width, height = image_sizes[:, 1:2], image_sizes[:, 0:1]
        scale = ops.concat([width, height, width, height], axis=1).expand_dims(1)  # [B, 1, 4]
        gt_boxes = box_cxcywh_to_xyxy(tgt_boxes) * scale
        index = ops.gather(self.index_of_id, ops.clip_by_value(tgt_labels, 0, self.max_id), 0)
        gt_valid = ops.logical_and(tgt_valid, index >= 0)
        gt_classes = ops.maximum(index, 0)
        return self.with_loss(image, image_sizes, gt_boxes, gt_classes, gt_valid)
