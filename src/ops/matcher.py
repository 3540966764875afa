"""Hungarian matching between DETR predictions and padded ground truth, computed inside the graph.

Follows facebookresearch/detr ``models/matcher.py`` (HungarianMatcher): the matching cost between query q
and target t is

    cost_bbox * |box_q - box_t|_1  -  cost_class * softmax(logits_q)[label_t]  -  cost_giou * GIoU(q, t)

(boxes in normalized cxcywh for the L1 term, converted to xyxy for GIoU), and every image is solved as a
linear sum assignment. The reference moves the cost to the host and calls SciPy; here the solver is
``mindspore.scipy.optimize.linear_sum_assignment`` so that matching stays in a static graph (CPU and Ascend
kernels exist; there is no GPU kernel). ``_solve_assignment`` is the only place that calls the solver, so
a different back end can be swapped in there.

With ``class_cost="focal"`` the class term is the focal cost of detrex ``detrex/modeling/matcher.py``
(HungarianMatcher with ``cost_class_type="focal_loss_cost"``, used by DINO and Focus-DETR): with ``p`` the sigmoid
probability of the target class, ``alpha (1-p)^gamma (-log(p + 1e-8)) - (1-alpha) p^gamma (-log(1 - p + 1e-8))``
is added with weight ``cost_class`` (the logits have no "no object" column then).
"""

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.scipy.optimize import linear_sum_assignment

from src.ops.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def _solve_assignment(cost: Tensor, num_valid: Tensor):
    """Minimum-cost assignment of one image, restricted to its valid (leading) target columns.

    Args:
        cost: float32 [Q, N] matching cost; columns ``num_valid..N-1`` are padding and are ignored.
        num_valid: int64 scalar, number of valid targets (valid targets come first).

    Returns:
        Tuple ``(query_idx, tgt_idx)`` of int32 [min(Q, N)] tensors: matched pairs first, ordered by query
        index, followed by -1 padding.
    """
    # The kernel rejects dimension_limit 0, so an image without targets is solved on one padded column and
    # that pair is discarded below.
    limit = ops.maximum(num_valid, ops.ones_like(num_valid))
    query_idx, tgt_idx = linear_sum_assignment(cost, False, limit)
    query_idx = query_idx.astype(ms.int32)
    tgt_idx = tgt_idx.astype(ms.int32)
    keep = ops.logical_and(tgt_idx >= 0, tgt_idx < num_valid.astype(ms.int32))
    minus_one = ops.full_like(query_idx, -1)
    return ops.where(keep, query_idx, minus_one), ops.where(keep, tgt_idx, minus_one)


def _invert_pairs(src_idx: Tensor, dst_idx: Tensor, size: int) -> Tensor:
    """Turn padded match pairs into a lookup table indexed by the source side.

    Args:
        src_idx: int32 [B, K], source index of each pair, -1 for padding.
        dst_idx: int32 [B, K], destination index of each pair, -1 for padding.
        size: number of source slots.

    Returns:
        int32 [B, size]: the destination matched to each source slot, -1 when unmatched.
    """
    # A comparison against arange avoids scatter ops, and padding pairs (-1) never hit a slot.
    slots = ops.arange(size, dtype=ms.int32)
    hit = (src_idx.expand_dims(-1) == slots).astype(ms.int32)
    return ((hit * (dst_idx + 1).expand_dims(-1)).sum(axis=1) - 1).astype(ms.int32)


class HungarianMatcher(nn.Cell):
    """One-to-one matching of queries to ground-truth boxes, per image, without gradient.

    Args:
        cost_class: weight of the classification cost (negative softmax probability of the target class, or the
            focal cost).
        cost_bbox: weight of the L1 distance between normalized cxcywh boxes.
        cost_giou: weight of the negative generalized IoU.
        class_cost: ``"softmax"`` (DETR) or ``"focal"`` (detrex DINO / Focus-DETR, sigmoid classes).
        focal_alpha: alpha of the focal class cost (0.25).
        focal_gamma: gamma of the focal class cost (2).

    Raises:
        ValueError: if all three weights are zero or ``class_cost`` is unknown.

    Inputs:
        pred_logits: float [B, Q, C+1] class logits (last class is "no object"); [B, Q, C] sigmoid logits with
            ``class_cost="focal"``.
        pred_boxes: float [B, Q, 4] normalized cxcywh boxes.
        tgt_boxes: float [B, N, 4] normalized cxcywh target boxes, padded.
        tgt_labels: int [B, N] target class indices in [0, C], padded.
        tgt_valid: bool [B, N], True for real targets; valid rows come first.

    Outputs:
        Tuple ``(query_to_tgt, tgt_to_query)``:

        - query_to_tgt: int32 [B, Q], index of the target matched to each query, -1 if unmatched.
        - tgt_to_query: int32 [B, N], index of the query matched to each target, -1 for padded targets
          (and for valid targets left unmatched when there are more targets than queries).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 1.0, cost_giou: float = 1.0,
                 class_cost: str = "softmax", focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all matching costs are zero")
        if class_cost not in ("softmax", "focal"):
            raise ValueError(f"HungarianMatcher: class_cost must be 'softmax' or 'focal', got {class_cost!r}")
        self.focal = class_cost == "focal"
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    def cost_matrix(self, pred_logits, pred_boxes, tgt_boxes, tgt_labels):
        """Matching cost for every image, query and target slot (padded slots included).

        Args:
            pred_logits: float [B, Q, C+1] ([B, Q, C] for the focal cost).
            pred_boxes: float [B, Q, 4] cxcywh.
            tgt_boxes: float [B, N, 4] cxcywh.
            tgt_labels: int [B, N].

        Returns:
            float32 [B, Q, N].
        """
        pred_logits = pred_logits.astype(ms.float32)
        pred_boxes = pred_boxes.astype(ms.float32)
        tgt_boxes = tgt_boxes.astype(ms.float32)
        # score @ one_hot(labels)^T picks score[q, label_t] exactly and batches the gather.
        onehot = ops.one_hot(tgt_labels.astype(ms.int32), pred_logits.shape[-1], 1.0, 0.0).astype(ms.float32)
        if self.focal:
            prob = ops.sigmoid(pred_logits)
            pos = self.focal_alpha * ops.pow(1.0 - prob, self.focal_gamma) * -ops.log(prob + 1e-8)
            neg = (1.0 - self.focal_alpha) * ops.pow(prob, self.focal_gamma) * -ops.log(1.0 - prob + 1e-8)
            class_cost = ops.bmm(pos - neg, onehot.swapaxes(1, 2))
        else:
            class_cost = -ops.bmm(ops.softmax(pred_logits, axis=-1), onehot.swapaxes(1, 2))
        l1 = ops.abs(pred_boxes.expand_dims(2) - tgt_boxes.expand_dims(1)).sum(axis=-1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        return self.cost_bbox * l1 + self.cost_class * class_cost - self.cost_giou * giou

    def construct(self, pred_logits, pred_boxes, tgt_boxes, tgt_labels, tgt_valid):
        pred_logits = ops.stop_gradient(pred_logits)
        pred_boxes = ops.stop_gradient(pred_boxes)
        cost = ops.stop_gradient(self.cost_matrix(pred_logits, pred_boxes, tgt_boxes, tgt_labels))
        num_valid = tgt_valid.astype(ms.int64).sum(axis=1)
        query_idx = []
        tgt_idx = []
        # The batch size is static, so this loop is unrolled at compile time (one solver call per image).
        for b in range(cost.shape[0]):
            q_b, t_b = _solve_assignment(cost[b], num_valid[b])
            query_idx.append(q_b)
            tgt_idx.append(t_b)
        query_idx = ops.stack(query_idx)
        tgt_idx = ops.stack(tgt_idx)
        query_to_tgt = _invert_pairs(query_idx, tgt_idx, pred_boxes.shape[1])
        tgt_to_query = _invert_pairs(tgt_idx, query_idx, tgt_boxes.shape[1])
        return ops.stop_gradient(query_to_tgt), ops.stop_gradient(tgt_to_query)
