"""DETR set-prediction loss on static, padded targets.

Follows facebookresearch/detr ``models/detr.py`` (SetCriterion) for the detection losses:

* ``loss_ce``: cross entropy over all queries; matched queries take their target's class, the others the
  "no object" class ``num_classes``, whose weight is ``eos_coef`` (the rest weigh 1). Normalized like
  ``torch.nn.functional.cross_entropy`` with ``weight``: ``sum_i w_i * nll_i / sum_i w_i`` over the batch.
* ``loss_bbox``: L1 distance between matched predicted and target cxcywh boxes, summed, divided by
  ``num_boxes``.
* ``loss_giou``: ``1 - GIoU`` of the matched pairs, summed, divided by ``num_boxes``.

``num_boxes`` is the number of valid targets in the batch, averaged over ranks when distributed and
clamped to at least 1. With ``aux_loss`` the same losses (fresh matching, same weights) are added for
every decoder layer. The logging-only terms of the reference (class_error, cardinality_error) are left out.
"""

import mindspore as ms
from mindspore import nn, ops

from src.ops.box_count import BoxCount
from src.ops.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from src.ops.matcher import HungarianMatcher


class SetCriterion(nn.Cell):
    """Weighted DETR loss over the decoder layers, matching each layer's predictions separately.

    Args:
        num_classes: number of object classes C (the "no object" class is index C; 91 for raw COCO ids).
        matcher: a :class:`HungarianMatcher` (or a Cell with the same inputs and outputs).
        eos_coef: cross-entropy weight of the "no object" class.
        weight_ce: weight of ``loss_ce`` in the total.
        weight_bbox: weight of ``loss_bbox`` in the total.
        weight_giou: weight of ``loss_giou`` in the total.
        aux_loss: add the losses of every decoder layer; otherwise only the last layer counts.
        distributed: average ``num_boxes`` over the ranks of the default communication group (needs
            ``mindspore.communication.init()`` to have been called).

    Inputs:
        pred_logits: float [L, B, Q, C+1] class logits of every decoder layer (index -1 is the last).
        pred_boxes: float [L, B, Q, 4] normalized cxcywh boxes.
        tgt_boxes: float [B, N, 4] normalized cxcywh target boxes, padded rows arbitrary (0 by convention).
        tgt_labels: int [B, N] target classes in [0, C), padded rows arbitrary within [0, C].
        tgt_valid: bool [B, N], True for real targets; valid rows come first.

    Outputs:
        Tuple ``(loss, loss_terms)``: ``loss`` float32 scalar, the weighted sum over the used layers;
        ``loss_terms`` float32 [3], the unweighted ``(loss_ce, loss_bbox, loss_giou)`` of the last layer.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Cell,
        eos_coef: float = 0.1,
        weight_ce: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        aux_loss: bool = True,
        distributed: bool = False,
    ):
        super().__init__()
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.eos_coef = float(eos_coef)
        self.weight_ce = float(weight_ce)
        self.weight_bbox = float(weight_bbox)
        self.weight_giou = float(weight_giou)
        self.aux_loss = bool(aux_loss)
        self.num_boxes = BoxCount(distributed)

    def layer_losses(self, logits, boxes, tgt_boxes, tgt_labels, tgt_valid, num_boxes):
        """Unweighted losses of one decoder layer.

        Args:
            logits: float32 [B, Q, C+1].
            boxes: float32 [B, Q, 4] cxcywh.
            tgt_boxes, tgt_labels, tgt_valid: as in ``construct``.
            num_boxes: float32 scalar normalizer.

        Returns:
            Tuple of float32 scalars ``(loss_ce, loss_bbox, loss_giou)``.
        """
        query_to_tgt, tgt_to_query = self.matcher(logits, boxes, tgt_boxes, tgt_labels, tgt_valid)

        # Classification: the target class of every query, "no object" where unmatched.
        query_matched = query_to_tgt >= 0
        matched_labels = ops.gather_elements(tgt_labels.astype(ms.int32), 1, ops.relu(query_to_tgt))
        no_object = ops.full_like(matched_labels, self.num_classes)
        target_classes = ops.where(query_matched, matched_labels, no_object)
        log_prob = ops.log_softmax(logits, axis=-1)
        nll = -ops.gather_elements(log_prob, 2, target_classes.expand_dims(-1)).squeeze(-1)
        class_weight = ops.where(query_matched, ops.ones_like(nll), ops.full_like(nll, self.eos_coef))
        loss_ce = (class_weight * nll).sum() / class_weight.sum()

        # Boxes: gather the query matched to each target slot; unmatched/padded slots are masked out.
        tgt_matched = tgt_to_query >= 0
        gather_idx = ops.tile(ops.relu(tgt_to_query).expand_dims(-1), (1, 1, 4))
        src_boxes = ops.gather_elements(boxes, 1, gather_idx)
        tgt_boxes = tgt_boxes.astype(ms.float32)
        zeros = ops.zeros_like(tgt_matched.astype(ms.float32))
        l1 = ops.abs(src_boxes - tgt_boxes).sum(axis=-1)
        loss_bbox = ops.where(tgt_matched, l1, zeros).sum() / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        loss_giou = ops.where(tgt_matched, 1.0 - giou, zeros).sum() / num_boxes
        return loss_ce, loss_bbox, loss_giou

    def construct(self, pred_logits, pred_boxes, tgt_boxes, tgt_labels, tgt_valid):
        pred_logits = pred_logits.astype(ms.float32)
        pred_boxes = pred_boxes.astype(ms.float32)
        num_boxes = self.num_boxes(tgt_valid)
        num_layers = pred_logits.shape[0]
        first_layer = 0 if self.aux_loss else num_layers - 1
        loss = ops.zeros((), ms.float32)
        loss_ce = loss_bbox = loss_giou = loss
        # The layer count is static, so this loop is unrolled at compile time.
        for layer in range(first_layer, num_layers):
            loss_ce, loss_bbox, loss_giou = self.layer_losses(
                pred_logits[layer], pred_boxes[layer], tgt_boxes, tgt_labels, tgt_valid, num_boxes
            )
            loss = loss + self.weight_ce * loss_ce + self.weight_bbox * loss_bbox + self.weight_giou * loss_giou
        loss_terms = ops.stop_gradient(ops.stack([loss_ce, loss_bbox, loss_giou]))
        return loss, loss_terms


def build_criterion(
    num_classes: int,
    aux_loss: bool = True,
    set_cost_class: float = 1.0,
    set_cost_bbox: float = 5.0,
    set_cost_giou: float = 2.0,
    class_loss_coef: float = 1.0,
    bbox_loss_coef: float = 5.0,
    giou_loss_coef: float = 2.0,
    eos_coef: float = 0.1,
    distributed: bool = False,
) -> SetCriterion:
    """Build the DETR criterion from the ``loss:`` config keys (defaults are detr's main.py defaults).

    Args:
        num_classes: number of object classes (91 for raw COCO category ids).
        aux_loss: add the losses of every decoder layer.
        set_cost_class: matching weight of the class probability.
        set_cost_bbox: matching weight of the L1 box distance.
        set_cost_giou: matching weight of the GIoU.
        class_loss_coef: weight of loss_ce.
        bbox_loss_coef: weight of loss_bbox.
        giou_loss_coef: weight of loss_giou.
        eos_coef: cross-entropy weight of the "no object" class.
        distributed: average the box count over ranks.

    Returns:
        A :class:`SetCriterion`.

    Raises:
        ValueError: if all matching costs are zero.
    """
    matcher = HungarianMatcher(cost_class=set_cost_class, cost_bbox=set_cost_bbox, cost_giou=set_cost_giou)
    return SetCriterion(
        num_classes,
        matcher,
        eos_coef=eos_coef,
        weight_ce=class_loss_coef,
        weight_bbox=bbox_loss_coef,
        weight_giou=giou_loss_coef,
        aux_loss=aux_loss,
        distributed=distributed,
    )
