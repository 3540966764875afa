"""Contrastive denoising (CDN) queries of DINO / Focus-DETR with static shapes.

Follows detrex ``projects/focus_detr/modeling/focus_detr.py`` (``FOCUS_DETR.prepare_for_cdn`` and
``dn_post_process``, copied there from detrex DINO; DINO paper section 3.3). In training the decoder gets, in front of
its ``Q`` matching queries, noised copies of the ground truth:

* ``dn_number`` (100) positive/negative query pairs per image are shared out in ``groups = dn_number // m`` groups
  (at least 1), where ``m`` is the largest ground-truth count of the batch. Group ``g`` owns ``2m`` consecutive
  slots: ``m`` positives (copy ``j`` of GT box ``j``) then ``m`` negatives (again box ``j``); slots past an image's
  own count are padding (zero label embedding, zero unactivated box, i.e. a box at 0.5).
* Label noise: each query's class is replaced by a uniform random class with probability
  ``label_noise_ratio / 2`` (the new class may equal the old one, as in the reference).
* Box noise: the corners of ``(x0, y0, x1, y1)`` move by ``u * (w/2, h/2, w/2, h/2) * box_noise_scale`` with a
  random sign per coordinate, ``u ~ U[0, 1)`` for positives and ``U[1, 2)`` for negatives, then clamp to
  ``[0, 1]``; the query's reference is the noised box, its content ``label_enc(noised class)``.
* Attention mask (True = blocked) over ``[S + Q]`` decoder queries: matching queries do not see any denoising slot;
  a denoising slot sees its own group and every matching query, not the other groups.

Static shapes: the reference computes ``m``, the group count and the slot count ``2 m groups`` per batch in Python.
Here the slot count is the compile-time constant ``S = 2 * max(dn_number, N)`` (``N`` = padded ``data.max_boxes``),
while ``m`` and ``groups`` are computed in the graph from ``tgt_valid``, so every slot's group, role (positive or
negative) and GT index are tensors and the group structure, the mask and the losses are exactly the reference's.
The ``S - 2 m groups`` trailing slots that the reference does not have (``2 m`` does not divide ``S`` in general)
form groups of their own (``group >= groups``): they are blocked from and for every real group, are never seen by
matching queries, and are left out of every loss (:func:`denoising_layout` returns ``in_group``). A batch without
ground truth gives no denoising loss (the reference skips denoising then); its slots still run, unseen.
"""

import mindspore as ms
from mindspore import nn, ops

from src.models.focus_detr.decoder import inverse_sigmoid
from src.ops.box_ops import box_cxcywh_to_xyxy


def num_denoising_slots(dn_number: int, max_boxes: int) -> int:
    """Static number ``S`` of denoising slots: ``2 * max(dn_number, max_boxes)`` (room for one full group).

    Raises:
        ValueError: if ``dn_number`` is not positive.
    """
    if dn_number <= 0:
        raise ValueError(f"dn_number must be > 0 to build denoising queries, got {dn_number}")
    return 2 * max(int(dn_number), int(max_boxes))


def denoising_layout(tgt_valid, dn_number: int):
    """Group structure of the denoising slots for this batch (all int32/bool tensors, static shapes).

    Args:
        tgt_valid (Tensor[bool]): ``[B, N]``; valid rows first.
        dn_number: denoising pairs per image (> 0).

    Returns:
        tuple of
            - gt_index (Tensor[int32]): ``[S]`` GT row each slot copies (``j`` within its half group);
            - positive (Tensor[bool]): ``[S]`` True on positive slots (first half of each group);
            - group (Tensor[int32]): ``[S]`` group id ``slot // 2m``;
            - in_group (Tensor[bool]): ``[S]`` True for slots of the ``groups`` real groups;
            - slot_valid (Tensor[bool]): ``[B, S]`` ``in_group`` and the copied row is a real box of that image;
            - groups (Tensor[int32]): scalar ``max(dn_number // m, 1)``;
            - has_gt (Tensor[bool]): scalar, True when the batch has at least one box.
    """
    num_slots = num_denoising_slots(dn_number, tgt_valid.shape[1])
    counts = tgt_valid.astype(ms.int32).sum(axis=1).astype(ms.int32)
    largest = counts.max()
    max_gt = ops.maximum(largest, 1)
    groups = ops.maximum(ops.floor_div(dn_number, max_gt), 1)
    slot = ops.arange(num_slots, dtype=ms.int32)
    group_size = 2 * max_gt
    group = ops.floor_div(slot, group_size)
    within = slot - group * group_size
    positive = within < max_gt
    gt_index = ops.select(positive, within, within - max_gt)
    in_group = group < groups
    slot_valid = ops.logical_and(in_group.expand_dims(0), gt_index.expand_dims(0) < counts.expand_dims(1))
    return gt_index, positive, group, in_group, slot_valid, groups, largest > 0


def denoising_attention_mask(group, num_queries: int):
    """Decoder self-attention mask for ``S`` denoising slots followed by ``num_queries`` matching queries.

    Args:
        group (Tensor[int32]): ``[S]`` group id of each slot.
        num_queries: matching queries ``Q``.

    Returns:
        Tensor[bool]: ``[S + Q, S + Q]``, True where the row query may not attend to the column key.
    """
    num_slots = group.shape[0]
    owner = ops.concat((group.astype(ms.int32), ops.full((num_queries,), -1, dtype=ms.int32)))
    key_is_dn = ops.concat((ops.ones((num_slots,), ms.bool_), ops.zeros((num_queries,), ms.bool_)))
    return ops.logical_and(key_is_dn.expand_dims(0), owner.expand_dims(1) != owner.expand_dims(0))


def noisy_denoising_targets(tgt_boxes, tgt_labels, gt_index, positive, slot_valid, u_flip, u_class, u_sign,
                            u_shift, num_classes: int, label_noise_ratio: float, box_noise_scale: float):
    """Noised classes and boxes of every denoising slot, from given uniform draws (deterministic).

    Args:
        tgt_boxes (Tensor[float32]): ``[B, N, 4]`` normalized cxcywh.
        tgt_labels (Tensor[int32]): ``[B, N]`` contiguous classes ``0..K-1``.
        gt_index, positive, slot_valid: from :func:`denoising_layout`.
        u_flip, u_class (Tensor[float32]): ``[B, S]`` uniforms in ``[0, 1)``: flip the class when
            ``u_flip < label_noise_ratio / 2``, to ``floor(u_class * K)``.
        u_sign, u_shift (Tensor[float32]): ``[B, S, 4]`` uniforms: sign ``-1`` where ``u_sign < 0.5``, magnitude
            ``u_shift`` (plus 1 on negatives) in units of the half width/height.
        num_classes: ``K``.
        label_noise_ratio: 0 disables label noise.
        box_noise_scale: 0 disables box noise.

    Returns:
        tuple: ``labels [B, S]`` int32 (0 on invalid slots) and ``boxes [B, S, 4]`` float32 normalized cxcywh
        (0 on invalid slots).
    """
    batch, num_slots = slot_valid.shape
    index = ops.broadcast_to(gt_index.expand_dims(0), (batch, num_slots))
    labels = ops.gather_elements(tgt_labels.astype(ms.int32), 1, index)
    boxes = ops.gather_elements(tgt_boxes, 1, ops.broadcast_to(index.expand_dims(-1), (batch, num_slots, 4)))
    if label_noise_ratio > 0:
        new_class = ops.clamp(ops.floor(u_class * num_classes).astype(ms.int32), 0, num_classes - 1)
        labels = ops.select(u_flip < label_noise_ratio * 0.5, new_class, labels)
    if box_noise_scale > 0:
        corners = box_cxcywh_to_xyxy(boxes)
        half = ops.tile(boxes[..., 2:] / 2, (1, 1, 2))
        sign = ops.select(u_sign < 0.5, -ops.ones_like(u_sign), ops.ones_like(u_sign))
        magnitude = u_shift + ops.logical_not(positive).astype(ms.float32).reshape(1, -1, 1)
        corners = ops.clamp(corners + magnitude * sign * half * box_noise_scale, 0.0, 1.0)
        boxes = ops.concat(((corners[..., :2] + corners[..., 2:]) / 2, corners[..., 2:] - corners[..., :2]), -1)
    valid = slot_valid.astype(ms.float32)
    labels = labels * slot_valid.astype(ms.int32)
    return labels, boxes * valid.expand_dims(-1)


class DenoisingQueries(nn.Cell):
    """Draws the noise and builds the denoising decoder inputs (no parameters; the label embedding is passed in).

    Args:
        num_classes: ``K`` contiguous classes (size of the label embedding).
        dn_number: denoising pairs per image (100).
        label_noise_ratio: twice the class flip probability (0.5).
        box_noise_scale: corner noise scale (1.0).

    Inputs:
        tgt_boxes (Tensor[float32]): ``[B, N, 4]`` normalized cxcywh; tgt_labels (Tensor[int32]): ``[B, N]``
        contiguous classes; tgt_valid (Tensor[bool]): ``[B, N]``; label_table (Tensor[float32]): ``[K, C]`` the
        ``label_enc`` embedding table; num_queries (int): matching queries ``Q``.

    Outputs:
        tuple of
            - query (Tensor[float32]): ``[B, S, C]`` label embeddings (0 on invalid slots);
            - ref_unact (Tensor[float32]): ``[B, S, 4]`` inverse-sigmoid noised boxes (0 on invalid slots);
            - attn_mask (Tensor[bool]): ``[S + Q, S + Q]`` (see :func:`denoising_attention_mask`);
            - gt_index, positive, in_group, slot_valid, groups, has_gt: see :func:`denoising_layout`.
    """

    def __init__(self, num_classes: int, dn_number: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0):
        super().__init__()
        num_denoising_slots(dn_number, 0)
        self.num_classes = int(num_classes)
        self.dn_number = int(dn_number)
        self.label_noise_ratio = float(label_noise_ratio)
        self.box_noise_scale = float(box_noise_scale)

    def construct(self, tgt_boxes, tgt_labels, tgt_valid, label_table, num_queries: int):
        gt_index, positive, group, in_group, slot_valid, groups, has_gt = denoising_layout(tgt_valid, self.dn_number)
        batch, num_slots = slot_valid.shape
        u_flip = ops.rand((batch, num_slots), dtype=ms.float32)
        u_class = ops.rand((batch, num_slots), dtype=ms.float32)
        u_sign = ops.rand((batch, num_slots, 4), dtype=ms.float32)
        u_shift = ops.rand((batch, num_slots, 4), dtype=ms.float32)
        labels, boxes = noisy_denoising_targets(tgt_boxes.astype(ms.float32), tgt_labels, gt_index, positive,
                                                slot_valid, u_flip, u_class, u_sign, u_shift, self.num_classes,
                                                self.label_noise_ratio, self.box_noise_scale)
        valid = slot_valid.astype(ms.float32).expand_dims(-1)
        query = ops.gather(label_table, labels, 0) * valid
        ref_unact = inverse_sigmoid(boxes) * valid
        attn_mask = denoising_attention_mask(group, num_queries)
        return query, ref_unact, attn_mask, gt_index, positive, in_group, slot_valid, groups, has_gt
