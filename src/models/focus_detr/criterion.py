"""Focus-DETR training loss on static, padded targets, with the contrastive denoising (DN) losses.

Follows detrex ``projects/focus_detr/modeling/two_stage_criterion.py`` (``TwoStageCriterion``, itself the DINO
two-stage criterion built on ``detrex/modeling/criterion/criterion.py::SetCriterion``):

* every decoder layer and the two-stage encoder proposals are matched separately by a Hungarian matcher with the
  focal class cost (:class:`src.ops.matcher.HungarianMatcher`, ``class_cost="focal"``; weights class 2, L1 5,
  GIoU 2);
* ``loss_class``: sigmoid focal loss (alpha 0.25, gamma 2) of all queries against one-hot targets over the
  ``K`` contiguous classes (unmatched queries have an all-zero row). detrex averages over queries, sums, divides
  by ``num_boxes`` and multiplies by the query count, which is the plain sum divided by ``num_boxes``;
* ``loss_bbox`` (L1 of matched cxcywh boxes) and ``loss_giou`` (``1 - GIoU``), summed and divided by
  ``num_boxes``;
* weights 1 / 5 / 2 on the final layer, each auxiliary layer and the encoder proposals (``_enc``);
* ``select_loss``: the FTS foreground supervision (:func:`.losses.foreground_supervision_loss`) against FCOS-style
  token labels (:func:`.fts.fcos_foreground_labels`), weight 1.5.
* denoising (:meth:`FocusDETRCriterion.denoising_loss`, detrex ``dn_criterion.py::FOCUS_DETRCriterion.
  compute_dn_loss``): no matching; positive slot ``j`` of every group is assigned GT box ``j``. ``loss_class_dn``
  is the focal loss over every slot of the real groups (negatives and padding slots are all-zero rows),
  ``loss_bbox_dn``/``loss_giou_dn`` over the positive slots of real boxes, each divided by ``num_boxes * groups``;
  weights 1 / 5 / 2 on the final layer and (with ``aux_loss``) on every other decoder layer.

The targets carry dataset category ids (COCO: 1..90, sparse); they are mapped to the contiguous ``0..K-1`` indices of
the class heads with the dataset catalog's lookup table (:meth:`src.data.catalog.Catalog.id_to_label_table`).
"""

from typing import Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from src.models.focus_detr.fts import FCOS_STRIDES, fcos_foreground_labels
from src.models.focus_detr.losses import SELECT_LOSS_WEIGHT, foreground_supervision_loss, sigmoid_focal_loss
from src.ops.box_count import BoxCount
from src.ops.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from src.ops.matcher import HungarianMatcher


def level_shapes_of(image_hw: Tuple[int, int], num_levels: int) -> Tuple[Tuple[int, int], ...]:
    """Static ``(H_l, W_l)`` of the Focus-DETR levels for a padded input of ``image_hw``.

    Every stride-2 convolution of the ResNet (and of the neck's extra levels) rounds up, so level ``l`` (stride
    ``8 * 2^l``) has ``ceil`` applied once per halving.
    """
    height, width = image_hw
    shapes = []
    for lvl in range(2 + num_levels):
        height, width = -(-height // 2), -(-width // 2)
        if lvl >= 2:
            shapes.append((height, width))
    return tuple(shapes)


class FocusDETRCriterion(nn.Cell):
    """Weighted Focus-DETR loss (decoder layers, encoder proposals, foreground supervision; denoising groups in
    :meth:`denoising_loss`).

    Args:
        num_classes: ``K`` contiguous sigmoid classes of the heads (80 for COCO).
        matcher: a :class:`HungarianMatcher` built with ``class_cost="focal"``.
        weight_class, weight_bbox, weight_giou: weights of the three detection losses (1, 5, 2).
        weight_select: weight of the foreground supervision loss (1.5).
        focal_alpha, focal_gamma: focal loss parameters (0.25, 2).
        aux_loss: add the losses of the auxiliary decoder layers and of the encoder proposals.
        label_table: int32 ``[max id + 1]``, dataset category id -> contiguous index
            (:meth:`src.data.catalog.Catalog.id_to_label_table`); None when labels already are ``0..K-1``.
        distributed: average ``num_boxes`` over the ranks (needs ``mindspore.communication.init()``).

    Inputs:
        outputs (tuple): :class:`src.models.focus_detr.model.FocusDETR`'s outputs
            (:data:`src.models.focus_detr.model.OUTPUT_NAMES`):
            pred_logits (Tensor[float32]): ``[D, B, Q, K]`` per decoder layer (index -1 the final one);
            pred_boxes (Tensor[float32]): ``[D, B, Q, 4]`` normalized cxcywh;
            enc_logits (Tensor[float32]): ``[B, Q, K]`` encoder proposal logits;
            enc_boxes (Tensor[float32]): ``[B, Q, 4]`` encoder proposal boxes, cxcywh;
            foreground_logits (Tensor[float32]): ``[B, N]`` FTS logits over all tokens;
            mask_flatten (Tensor[bool]): ``[B, N]`` token padding mask (unused: the labels come from ``image_mask``).
        image_mask (Tensor[bool]): ``[B, H, W]`` input padding mask, True on padding; gives the level shapes and the
            unpadded image sizes.
        tgt_boxes (Tensor[float32]): ``[B, M, 4]`` normalized cxcywh of the unpadded resized image.
        tgt_labels (Tensor[int32]): ``[B, M]`` dataset category ids (or contiguous without ``label_table``).
        tgt_valid (Tensor[bool]): ``[B, M]``; valid rows first.
        dn_outputs (tuple or None): the denoising outputs of :class:`src.models.focus_detr.model.FocusDETR`
            (:data:`src.models.focus_detr.model.DN_OUTPUT_NAMES`, the arguments of :meth:`denoising_loss`); their
            loss is added, with the same ``num_boxes`` (one all-reduce per step).

    Outputs:
        tuple: ``loss`` float32 scalar (weighted total) and ``loss_terms`` float32 ``[3]``, the unweighted final-layer
        ``(loss_class, loss_bbox, loss_giou)``.

    Raises:
        ValueError: (while tracing) if the token count does not match the levels of ``image_mask``.
    """

    def __init__(self, num_classes: int, matcher: nn.Cell, weight_class: float = 1.0, weight_bbox: float = 5.0,
                 weight_giou: float = 2.0, weight_select: float = SELECT_LOSS_WEIGHT, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, aux_loss: bool = True, label_table=None, distributed: bool = False):
        super().__init__()
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weight_class = float(weight_class)
        self.weight_bbox = float(weight_bbox)
        self.weight_giou = float(weight_giou)
        self.weight_select = float(weight_select)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.aux_loss = bool(aux_loss)
        self.map_coco_ids = label_table is not None
        self.label_table = Tensor(np.asarray(label_table if self.map_coco_ids else [0], np.int32).reshape(-1))
        self.num_boxes = BoxCount(distributed)

    def contiguous_labels(self, tgt_labels):
        """Dataset category ids ``[B, M]`` -> contiguous int32 indices ``[B, M]`` (identity without a label table)."""
        labels = tgt_labels.astype(ms.int32)
        if self.map_coco_ids:
            labels = ops.gather(self.label_table, ops.clamp(labels, 0, self.label_table.shape[0] - 1), 0)
        return labels

    def set_losses(self, logits, boxes, tgt_boxes, labels, tgt_valid, num_boxes):
        """Unweighted ``(loss_class, loss_bbox, loss_giou)`` of one prediction set ``[B, Q, K]`` / ``[B, Q, 4]``."""
        query_to_tgt, tgt_to_query = self.matcher(logits, boxes, tgt_boxes, labels, tgt_valid)
        matched_labels = ops.gather_elements(labels, 1, ops.relu(query_to_tgt))
        onehot = ops.one_hot(matched_labels, self.num_classes, 1.0, 0.0).astype(ms.float32)
        onehot = onehot * (query_to_tgt >= 0).astype(ms.float32).expand_dims(-1)
        loss_class = sigmoid_focal_loss(logits, onehot, num_boxes, self.focal_alpha, self.focal_gamma)

        tgt_matched = tgt_to_query >= 0
        gather_idx = ops.tile(ops.relu(tgt_to_query).expand_dims(-1), (1, 1, 4))
        src_boxes = ops.gather_elements(boxes, 1, gather_idx)
        zeros = ops.zeros_like(tgt_matched.astype(ms.float32))
        l1 = ops.abs(src_boxes - tgt_boxes).sum(axis=-1)
        loss_bbox = ops.where(tgt_matched, l1, zeros).sum() / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        loss_giou = ops.where(tgt_matched, 1.0 - giou, zeros).sum() / num_boxes
        return loss_class, loss_bbox, loss_giou

    def weighted(self, terms):
        """Weighted sum of one ``(loss_class, loss_bbox, loss_giou)`` triple."""
        return self.weight_class * terms[0] + self.weight_bbox * terms[1] + self.weight_giou * terms[2]

    def select_loss(self, foreground_logits, image_mask, tgt_boxes, tgt_valid):
        """Unweighted foreground supervision loss (FCOS-style labels at the model's level shapes)."""
        shapes = level_shapes_of((image_mask.shape[1], image_mask.shape[2]), len(FCOS_STRIDES))
        if sum(h * w for h, w in shapes) != foreground_logits.shape[1]:
            raise ValueError(f"levels {shapes} of a {image_mask.shape[1:]} input do not give the "
                             f"{foreground_logits.shape[1]} foreground tokens")
        not_mask = ops.logical_not(image_mask).astype(ms.float32)
        image_sizes = ops.stack((not_mask[:, :, 0].sum(axis=1), not_mask[:, 0, :].sum(axis=1)), axis=-1)
        labels = fcos_foreground_labels(tgt_boxes, tgt_valid, image_sizes, shapes)
        return foreground_supervision_loss(foreground_logits, labels, self.focal_alpha, self.focal_gamma)

    def denoising_loss(self, dn_logits, dn_boxes, gt_index, positive, in_group, slot_valid, groups, has_gt,
                       tgt_boxes, labels, num_boxes):
        """Weighted denoising loss of every decoder layer (final only without ``aux_loss``).

        Args:
            dn_logits (Tensor[float32]): ``[D, B, S, K]`` denoising slot logits.
            dn_boxes (Tensor[float32]): ``[D, B, S, 4]`` denoising slot boxes, normalized cxcywh.
            gt_index, positive, in_group, slot_valid, groups, has_gt: the slot layout of
                :func:`src.models.focus_detr.dn.denoising_layout`.
            tgt_boxes (Tensor[float32]): ``[B, N, 4]`` normalized cxcywh.
            labels (Tensor[int32]): ``[B, N]`` CONTIGUOUS classes (:meth:`contiguous_labels`).
            num_boxes (Tensor[float32]): scalar, :meth:`num_boxes` of the batch.

        Returns:
            Tensor[float32]: scalar; 0 for a batch without boxes (the reference skips denoising then).
        """
        dn_logits = dn_logits.astype(ms.float32)
        dn_boxes = dn_boxes.astype(ms.float32)
        batch, num_slots = slot_valid.shape
        index = ops.broadcast_to(gt_index.expand_dims(0), (batch, num_slots))
        slot_boxes = ops.gather_elements(tgt_boxes.astype(ms.float32), 1,
                                         ops.broadcast_to(index.expand_dims(-1), (batch, num_slots, 4)))
        slot_labels = ops.gather_elements(labels.astype(ms.int32), 1, index)
        matched = ops.logical_and(slot_valid, positive.expand_dims(0))
        onehot = ops.one_hot(slot_labels, self.num_classes, 1.0, 0.0).astype(ms.float32)
        onehot = onehot * matched.astype(ms.float32).expand_dims(-1)
        # Trailing slots outside the real groups do not exist in the reference: no class loss there.
        class_weight = ops.broadcast_to(in_group.astype(ms.float32).reshape(1, -1, 1), onehot.shape)
        matched_f = matched.astype(ms.float32)
        normalizer = num_boxes * groups.astype(ms.float32)
        num_layers = dn_logits.shape[0]
        first = 0 if self.aux_loss else num_layers - 1
        loss = ops.zeros((), ms.float32)
        for layer in range(first, num_layers):
            focal = sigmoid_focal_loss(dn_logits[layer], onehot, 1.0, self.focal_alpha, self.focal_gamma,
                                       weights=class_weight)
            boxes = dn_boxes[layer]
            l1 = (ops.abs(boxes - slot_boxes).sum(axis=-1) * matched_f).sum()
            giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(slot_boxes))
            giou_loss = ((1.0 - giou) * matched_f).sum()
            loss = loss + self.weighted((focal / normalizer, l1 / normalizer, giou_loss / normalizer))
        return loss * has_gt.astype(ms.float32)

    def construct(self, outputs, image_mask, tgt_boxes, tgt_labels, tgt_valid, dn_outputs=None):
        pred_logits, pred_boxes, enc_logits, enc_boxes, foreground_logits, _ = outputs
        pred_logits = pred_logits.astype(ms.float32)
        pred_boxes = pred_boxes.astype(ms.float32)
        tgt_boxes = tgt_boxes.astype(ms.float32)
        labels = self.contiguous_labels(tgt_labels)
        num_boxes = self.num_boxes(tgt_valid)
        num_layers = pred_logits.shape[0]
        final = self.set_losses(pred_logits[num_layers - 1], pred_boxes[num_layers - 1], tgt_boxes, labels,
                                tgt_valid, num_boxes)
        loss = self.weighted(final)
        if self.aux_loss:
            # The layer count is static, so this loop is unrolled at compile time.
            for layer in range(num_layers - 1):
                loss = loss + self.weighted(self.set_losses(pred_logits[layer], pred_boxes[layer], tgt_boxes,
                                                            labels, tgt_valid, num_boxes))
            loss = loss + self.weighted(self.set_losses(enc_logits.astype(ms.float32), enc_boxes.astype(ms.float32),
                                                        tgt_boxes, labels, tgt_valid, num_boxes))
        loss = loss + self.weight_select * self.select_loss(foreground_logits.astype(ms.float32), image_mask,
                                                            tgt_boxes, tgt_valid)
        if dn_outputs is not None:
            loss = loss + self.denoising_loss(*dn_outputs, tgt_boxes, labels, num_boxes)
        loss_terms = ops.stop_gradient(ops.stack(final))
        return loss, loss_terms


def build_criterion(num_classes: int = 80, aux_loss: bool = True, set_cost_class: float = 2.0,
                    set_cost_bbox: float = 5.0, set_cost_giou: float = 2.0, class_loss_coef: float = 1.0,
                    bbox_loss_coef: float = 5.0, giou_loss_coef: float = 2.0,
                    select_loss_coef: float = SELECT_LOSS_WEIGHT, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                    distributed: bool = False, label_table=None) -> FocusDETRCriterion:
    """Build the Focus-DETR criterion from the ``loss:`` config keys (defaults: detrex ``focus_detr_r50.py``).

    ``label_table``: int32 ``[max id + 1]`` dataset id -> contiguous class (``Catalog.id_to_label_table``); None: the
    COCO 2017 catalog's table (``src.data.catalog.coco_catalog``).

    Raises:
        ValueError: if all matching costs are zero.
    """
    if label_table is None:
        from src.data.catalog import coco_catalog

        label_table = coco_catalog().id_to_label_table()
    matcher = HungarianMatcher(cost_class=set_cost_class, cost_bbox=set_cost_bbox, cost_giou=set_cost_giou,
                               class_cost="focal", focal_alpha=focal_alpha, focal_gamma=focal_gamma)
    return FocusDETRCriterion(num_classes, matcher, weight_class=class_loss_coef, weight_bbox=bbox_loss_coef,
                              weight_giou=giou_loss_coef, weight_select=select_loss_coef, focal_alpha=focal_alpha,
                              focal_gamma=focal_gamma, aux_loss=aux_loss, label_table=label_table,
                              distributed=distributed)
