"""Focus-DETR detector (Zheng et al., ICCV 2023): backbone, neck, FTS, Focus encoder, two-stage DINO decoder.

Follows detrex ``projects/focus_detr/modeling/focus_detr.py`` (``FOCUS_DETR.forward``) and
``focus_detr_transformer.py`` (``FOCUS_DETRTransformer.forward``):

1. backbone (ResNet res3-5 or Swin stages 1-3) -> ChannelMapper (4 levels, strides 8-64); per level the padding
   mask (nearest resize) and the detrex sine position embedding (normalized, offset -0.5);
2. flatten; ``gen_encoder_output_proposals`` on ``features + position`` gives the processed tokens the
   foreground token selector scores (top-down modulation with ``alpha``), then the cascade top-k;
3. Focus encoder over the selected tokens (:mod:`.encoder`);
4. two-stage: grid proposals (wh ``0.05 * 2^l``) refined by the last box head, top ``num_queries`` tokens by the
   last class head's max logit; learnt target embedding, detached sigmoid proposals as first references;
5. decoder with iterative refinement (:mod:`.decoder`); per layer ``l`` the outputs are
   ``class_embed[l](h_l)`` and ``sigmoid(bbox_embed[l](h_l) + inverse_sigmoid(ref_{l-1}))``.

In training, with the targets given to ``construct`` (see :class:`FocusDETRWithLoss`), contrastive denoising
queries (:mod:`.dn`, ``FOCUS_DETR.prepare_for_cdn``) are put in front of the matching queries, the decoder's
self-attention gets their group mask, and their outputs are split off again (``dn_post_process``). Without targets
(evaluation, export) the network is ``(image, mask) -> outputs`` with no denoising.

Unlike the reference at inference (which passes an all-False mask), the padding mask given to ``construct`` is
always used.
"""

import math
from typing import Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from src.layers.expand import expand_to
from src.layers.mlp import MLP
from src.layers.position_encoding import PositionEmbeddingSine
from src.models.contract import DYNAMIC_IMAGE, Detector
from src.models.focus_detr.backbone import MultiLevelResNet, build_backbone
from src.models.focus_detr.criterion import build_criterion
from src.models.focus_detr.decoder import FocusDETRDecoder, inverse_sigmoid
from src.models.focus_detr.dn import DenoisingQueries
from src.models.focus_detr.encoder import OESM_TOPK, FocusDETREncoder, gather_tokens
from src.models.focus_detr.fts import (
    CASCADE_RATIOS,
    FOCUS_RHO,
    MaskPredictor,
    select_foreground_tokens,
    top_down_foreground_scores,
    weighted_memory_foreground_scores,
)
from src.models.focus_detr.neck import ChannelMapper
from src.models.focus_detr.postprocess import FocusDetectorPostProcess

SpatialShapes = Tuple[Tuple[int, int], ...]


OUTPUT_NAMES = ("pred_logits", "pred_boxes", "enc_logits", "enc_boxes", "foreground_logits", "mask_flatten")
"""The outputs of :class:`FocusDETR`, in order (what the post-process and the criterion take as ``outputs``)."""
DN_OUTPUT_NAMES = ("dn_logits", "dn_boxes", "gt_index", "positive", "in_group", "slot_valid", "groups", "has_gt")
"""The denoising outputs of :class:`FocusDETR` in training, in order
(:meth:`src.models.focus_detr.criterion.FocusDETRCriterion.denoising_loss`'s arguments). Grouped tuples, not
namedtuples: in MindSpore 2.10 graph mode a namedtuple passed between Cells compiles but gets zero gradients."""


class OffsetPositionEmbeddingSine(PositionEmbeddingSine):
    """detrex ``PositionEmbeddingSine(normalize=True)``: ``(cumsum + offset) / (last + eps) * scale``.

    Same as the shared DETR embedding (reused through its ``_encode``) plus the ``offset`` (-0.5 in the 12-epoch
    Focus-DETR configs, 0.0 in the 24/36-epoch ones).

    Args:
        num_pos_feats, temperature, scale, eps: see :class:`src.layers.position_encoding.PositionEmbeddingSine`.
        offset: added to the running counts before normalizing.

    Inputs:
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.

    Outputs:
        Tensor[float32]: ``[B, 2F, H, W]`` (y channels first).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000, scale: float = 2 * math.pi,
                 eps: float = 1e-6, offset: float = -0.5):
        super().__init__(num_pos_feats, temperature, scale, eps)
        self.offset = offset

    def construct(self, mask):
        not_mask = ops.logical_not(mask).astype(ms.float32)
        y_embed = ops.cumsum(not_mask, axis=1)
        x_embed = ops.cumsum(not_mask, axis=2)
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        return ops.concat((self._encode(y_embed), self._encode(x_embed)), axis=1)


def valid_ratios_of(mask):
    """Valid fraction of one level's mask ``[B, H, W]`` (True on padding) -> ``[B, 2]`` float32 as ``(w, h)``."""
    not_mask = ops.logical_not(mask).astype(ms.float32)
    ratio_h = not_mask[:, :, 0].sum(axis=1) / mask.shape[1]
    ratio_w = not_mask[:, 0, :].sum(axis=1) / mask.shape[2]
    return ops.stack((ratio_w, ratio_h), axis=-1)


def encoder_reference_points(spatial_shapes: SpatialShapes, valid_ratios):
    """Pixel-centre reference points of every token, relative to the valid region, for each level.

    detrex ``get_reference_points``: token ``(i, j)`` of level ``l`` sits at ``((j+0.5)/(r_w^l W_l),
    (i+0.5)/(r_h^l H_l))``, then multiplied by every level's valid ratio.

    Args:
        spatial_shapes: static ``(H_l, W_l)``.
        valid_ratios (Tensor[float32]): ``[B, L, 2]`` as ``(w, h)``.

    Returns:
        Tensor[float32]: ``[B, N, L, 2]`` normalized ``(x, y)``.
    """
    points = []
    for lvl, (height, width) in enumerate(spatial_shapes):
        ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                             indexing="ij")
        ref_x = Tensor(xs.reshape(1, -1)) / (valid_ratios[:, lvl, 0:1] * width)
        ref_y = Tensor(ys.reshape(1, -1)) / (valid_ratios[:, lvl, 1:2] * height)
        points.append(ops.stack((ref_x, ref_y), axis=-1))
    points = ops.concat(points, axis=1)
    return points.expand_dims(2) * valid_ratios.expand_dims(1)


def encoder_output_proposals(mask_flatten, spatial_shapes: SpatialShapes):
    """Default two-stage proposals per token (detrex ``gen_encoder_output_proposals``, proposal part).

    Token ``(i, j)`` of level ``l`` proposes the box centred at ``((j+0.5)/W_valid, (i+0.5)/H_valid)`` with
    ``w = h = 0.05 * 2^l`` (valid sizes counted per image). A proposal is valid when all four coordinates lie in
    ``(0.01, 0.99)`` and the token is not padding.

    Args:
        mask_flatten (Tensor[bool]): ``[B, N]``, True on padding.
        spatial_shapes: static ``(H_l, W_l)``.

    Returns:
        tuple: ``(proposals [B, N, 4] float32 inverse-sigmoid cxcywh with +inf on invalid tokens, valid [B, N]
        bool)``.
    """
    batch = mask_flatten.shape[0]
    start = 0
    proposals = []
    for lvl, (height, width) in enumerate(spatial_shapes):
        not_mask = ops.logical_not(mask_flatten[:, start:start + height * width].reshape(batch, height, width))
        not_mask = not_mask.astype(ms.float32)
        valid_h = not_mask[:, :, 0].sum(axis=1).reshape(batch, 1)
        valid_w = not_mask[:, 0, :].sum(axis=1).reshape(batch, 1)
        ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                             indexing="ij")
        cx = Tensor(xs.reshape(1, -1)) / valid_w
        cy = Tensor(ys.reshape(1, -1)) / valid_h
        wh = ops.full_like(cx, 0.05 * (2.0 ** lvl))
        proposals.append(ops.stack((cx, cy, wh, wh), axis=-1))
        start += height * width
    proposals = ops.concat(proposals, axis=1)
    inside = ops.logical_and(proposals > 0.01, proposals < 0.99).all(axis=-1)
    valid = ops.logical_and(inside, ops.logical_not(mask_flatten))
    # Clamp only to keep log finite where the box is invalid anyway (those entries become +inf below).
    safe = ops.clamp(proposals, 1e-6, 1.0 - 1e-6)
    unact = ops.log(safe / (1.0 - safe))
    unact = ops.masked_fill(unact, ops.logical_not(valid).expand_dims(-1), float("inf"))
    return unact, valid


class FocusDETR(nn.Cell):
    """Focus-DETR (two-stage, 4 scales) with a ResNet or Swin backbone and contrastive denoising in training.

    Parameter names follow the detrex checkpoint up to the documented renames: ``backbone.body.*`` for ResNet (see
    :func:`src.models.focus_detr.backbone.detectron2_to_mindspore_key`) or ``backbone.*`` with detrex's own names for
    Swin, ``neck.*``, ``transformer.{alpha, level_embeds, tgt_embed.embedding_table, enc_output, enc_output_norm,
    enc_mask_predictor, encoder.layers, decoder.layers, decoder.ref_point_head, decoder.norm}``, ``class_embed.{0..D}``,
    ``bbox_embed.{0..D}`` (index ``D`` = two-stage head, also the encoder's MCSP head), ``label_enc.embedding_table``
    (denoising label embedding ``[K, C]``; present even with ``dn_number=0`` so checkpoints stay interchangeable).
    LayerNorms use ``gamma/beta``.

    Args:
        num_classes: ``K`` sigmoid classes (80 for COCO in detrex), no no-object column.
        backbone: ``"resnet50"``, ``"resnet101"`` or a Swin preset (``"swin_t"``, ``"swin_b_384"``, ``"swin_l_384"``;
            see :func:`src.models.focus_detr.backbone.build_backbone`).
        train_backbone: train the backbone (the ResNet stem is always frozen).
        embed_dim: width ``C`` (256); divisible by 32 (GroupNorm groups) and by ``num_heads``.
        num_heads: attention heads (8).
        enc_layers: encoder layers (<= ``len(cascade)``).
        dec_layers: decoder layers.
        feedforward_dim: FFN width (2048).
        num_queries: two-stage proposals / decoder queries (900).
        num_points: deformable points per level (4).
        dropout: dropout everywhere in the transformer (0.0).
        rho: foreground keep ratio (0.5).
        cascade: per-encoder-layer keep ratios.
        oesm_topk: tokens of the OESM self-attention (300).
        pos_temperature: sine position temperature (10000 for 12ep configs, 20 for 24/36ep).
        pos_offset: sine position offset (-0.5 for 12ep, 0.0 for 24/36ep).
        num_levels: feature levels (backbone levels + extras); the FTS modulation is written for any ``L``.
        dn_number: denoising query pairs per image in training (100); 0 disables denoising.
        label_noise_ratio: denoising class noise (0.5: a class is replaced with probability 0.25).
        box_noise_scale: denoising box noise (1.0).
        token_selection: True = Focus-DETR's encoder; False = the DINO-equivalent encoder over all tokens (see
            :class:`src.models.focus_detr.encoder.FocusDETREncoder`). Without token selection the foreground
            selector is not run and ``foreground_logits`` are zeros (a baseline for inference cost, not for training).
        The MindSpore model zoo's 5-scale Focus-DETR (``configs/focus_detr/focus_detr_r50_5scale_mindspore_zoo.yaml``,
        converted by :mod:`src.models.focus_detr.convert_ms5`) is expressed by four more options:
        backbone_levels: 3 (res3-5, detrex) or 4 (res2-5; the extra level still comes from res5).
        fts_modulation: ``"score_map"`` (detrex, :func:`~src.models.focus_detr.fts.top_down_foreground_scores`)
            or ``"weighted_memory"`` (the zoo's, :func:`~src.models.focus_detr.fts.weighted_memory_foreground_scores`;
            ``alpha`` then has ``num_levels - 2`` entries).
        oesm_classes, value_from_memory: see :class:`src.models.focus_detr.encoder.FocusDETREncoder`.

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]`` normalized, zero-padded bottom/right.
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.
        tgt_boxes, tgt_labels, tgt_valid (optional): ``[B, N, 4]`` normalized cxcywh, ``[B, N]`` int32 CONTIGUOUS
            classes ``0..K-1``, ``[B, N]`` bool. Given (and ``dn_number > 0``): denoising queries are added.

    Outputs:
        without denoising, the tuple :data:`OUTPUT_NAMES`:
            - pred_logits (Tensor[float32]): ``[D, B, Q, K]`` per decoder layer (matching queries);
            - pred_boxes (Tensor[float32]): ``[D, B, Q, 4]`` normalized cxcywh in ``[0, 1]``;
            - enc_logits (Tensor[float32]): ``[B, Q, K]`` two-stage proposal logits (``class_embed[D]``);
            - enc_boxes (Tensor[float32]): ``[B, Q, 4]`` two-stage proposal boxes, cxcywh in ``[0, 1]``;
            - foreground_logits (Tensor[float32]): ``[B, N]`` FTS logits over all tokens, level order finest first;
            - mask_flatten (Tensor[bool]): ``[B, N]`` token padding mask (for the foreground loss);
        with denoising, the pair ``(outputs, dn_outputs)``: that tuple, and the tuple :data:`DN_OUTPUT_NAMES`:
            - dn_logits (Tensor[float32]): ``[D, B, S, K]``; dn_boxes (Tensor[float32]): ``[D, B, S, 4]``;
            - the slot layout ``gt_index [S]``, ``positive [S]``, ``in_group [S]``, ``slot_valid [B, S]``, ``groups``
              and ``has_gt`` of :func:`src.models.focus_detr.dn.denoising_layout`.

    Raises:
        ValueError: on an unknown backbone, a bad level count, or (while tracing) ``num_queries`` larger than the
            number of tokens.
    """

    def __init__(self, num_classes: int = 80, backbone: str = "resnet50", train_backbone: bool = True,
                 embed_dim: int = 256, num_heads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 feedforward_dim: int = 2048, num_queries: int = 900, num_points: int = 4, dropout: float = 0.0,
                 rho: float = FOCUS_RHO, cascade: Sequence[float] = CASCADE_RATIOS, oesm_topk: int = OESM_TOPK,
                 pos_temperature: float = 10000.0, pos_offset: float = -0.5, num_levels: int = 4,
                 dn_number: int = 100, label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0,
                 token_selection: bool = True, backbone_levels: int = 3, fts_modulation: str = "score_map",
                 oesm_classes: int = 0, value_from_memory: bool = False):
        super().__init__()
        if backbone_levels not in (3, 4):
            raise ValueError(f"backbone_levels must be 3 (res3-5) or 4 (res2-5), got {backbone_levels}")
        if num_levels < backbone_levels:
            raise ValueError(f"num_levels must be >= backbone_levels ({backbone_levels}), got {num_levels}")
        if fts_modulation not in ("score_map", "weighted_memory"):
            raise ValueError(f"fts_modulation must be 'score_map' or 'weighted_memory', got {fts_modulation!r}")
        if enc_layers > len(cascade):
            raise ValueError(f"enc_layers={enc_layers} exceeds the {len(cascade)} cascade ratios")
        if dn_number < 0:
            raise ValueError(f"dn_number must be >= 0, got {dn_number}")
        self.num_queries = num_queries
        self.num_levels = num_levels
        self.embed_dim = embed_dim
        self.rho = rho
        self.cascade = tuple(cascade[:enc_layers])
        self.backbone, backbone_channels = build_backbone(backbone, train_backbone, with_res2=backbone_levels == 4)
        self.neck = ChannelMapper(backbone_channels, embed_dim, num_outs=num_levels)
        self.position_embedding = OffsetPositionEmbeddingSine(embed_dim // 2, pos_temperature, offset=pos_offset)

        prior_bias = -math.log((1 - 0.01) / 0.01)
        class_heads = []
        box_heads = []
        for _ in range(dec_layers + 1):
            class_heads.append(nn.Dense(embed_dim, num_classes, bias_init=Tensor(np.full(num_classes, prior_bias,
                                                                                         np.float32))))
            box = MLP(embed_dim, embed_dim, 4, 3)
            box.layers[-1].weight.set_data(initializer("zeros", box.layers[-1].weight.shape, ms.float32))
            box.layers[-1].bias.set_data(initializer("zeros", box.layers[-1].bias.shape, ms.float32))
            box_heads.append(box)
        class_embed = nn.CellList(class_heads)
        bbox_embed = nn.CellList(box_heads)
        self.transformer = FocusTransformer(
            class_embed, bbox_embed, embed_dim, num_heads, enc_layers, dec_layers, feedforward_dim, num_queries,
            num_levels, num_points, dropout, oesm_topk, token_selection, fts_modulation, oesm_classes,
            value_from_memory)
        # Assigned after the transformer so the shared heads are named ``class_embed.*`` / ``bbox_embed.*``.
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        # torch's nn.Embedding initializes with N(0, 1).
        self.label_enc = nn.Embedding(num_classes, embed_dim, embedding_table=Normal(1.0))
        self.use_dn = dn_number > 0
        self.denoising = DenoisingQueries(num_classes, dn_number, label_noise_ratio, box_noise_scale) \
            if self.use_dn else None

    def _heads(self, hidden, init_ref, inter_refs):
        """Per-layer class logits ``[D, B, *, K]`` and refined boxes ``[D, B, *, 4]`` of the decoder outputs."""
        logits = []
        boxes = []
        for lvl in range(hidden.shape[0]):
            reference = init_ref if lvl == 0 else inter_refs[lvl - 1]
            logits.append(self.class_embed[lvl](hidden[lvl]))
            boxes.append(ops.sigmoid(self.bbox_embed[lvl](hidden[lvl]) + inverse_sigmoid(reference)))
        return ops.stack(logits), ops.stack(boxes)

    def features(self, image):
        """Neck levels of ``image`` (float32 ``[B, 3, H, W]``): a tuple of float32 ``[B, C, H_l, W_l]``, finest
        first. Its own method so that unpadded inference (``src.evaluation.unpadded``) compiles it as one graph."""
        return self.neck(self.backbone(image))

    def construct(self, image, mask, tgt_boxes=None, tgt_labels=None, tgt_valid=None):
        feats = self.features(image)
        masks = ()
        poses = ()
        for feat in feats:
            size = (feat.shape[2], feat.shape[3])
            small = ops.interpolate(mask[:, None].astype(ms.float32), size=size, mode="nearest")[:, 0] > 0.5
            masks = masks + (small,)
            poses = poses + (self.position_embedding(small),)
        if tgt_boxes is None or not self.use_dn:
            hidden, init_ref, inter_refs, enc_target, enc_boxes, fg_logits, mask_flatten = self.transformer(
                feats, masks, poses, self.rho, self.cascade)
            logits, boxes = self._heads(hidden, init_ref, inter_refs)
            return logits, boxes, self.class_embed[-1](enc_target), enc_boxes, fg_logits, mask_flatten
        dn_query, dn_ref_unact, attn_mask, gt_index, positive, in_group, slot_valid, groups, has_gt = self.denoising(
            tgt_boxes, tgt_labels, tgt_valid, self.label_enc.embedding_table, self.num_queries)
        hidden, init_ref, inter_refs, enc_target, enc_boxes, fg_logits, mask_flatten = self.transformer(
            feats, masks, poses, self.rho, self.cascade, dn_query, dn_ref_unact, attn_mask)
        logits, boxes = self._heads(hidden, init_ref, inter_refs)
        # dn_post_process: the first S decoder queries are the denoising slots.
        num_slots = dn_query.shape[1]
        outputs = (logits[:, :, num_slots:], boxes[:, :, num_slots:], self.class_embed[-1](enc_target), enc_boxes,
                   fg_logits, mask_flatten)
        dn_outputs = (logits[:, :, :num_slots], boxes[:, :, :num_slots], gt_index, positive, in_group, slot_valid,
                      groups, has_gt)
        return outputs, dn_outputs


class FocusTransformer(nn.Cell):
    """FTS + Focus encoder + two-stage query selection + decoder (detrex ``FOCUS_DETRTransformer``).

    Args:
        class_embed, bbox_embed (nn.CellList): the model's ``D + 1`` heads (shared, not owned).
        Others: see :class:`FocusDETR`.
    """

    def __init__(self, class_embed: nn.CellList, bbox_embed: nn.CellList, embed_dim: int, num_heads: int,
                 enc_layers: int, dec_layers: int, feedforward_dim: int, num_queries: int, num_levels: int,
                 num_points: int, dropout: float, oesm_topk: int, token_selection: bool = True,
                 fts_modulation: str = "score_map", oesm_classes: int = 0, value_from_memory: bool = False):
        super().__init__()
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.token_selection = token_selection
        self.weighted_memory = fts_modulation == "weighted_memory"
        num_alpha = num_levels - 2 if self.weighted_memory else num_levels - 1
        self.alpha = Parameter(initializer(ms.common.initializer.Uniform(0.3), (num_alpha,), ms.float32),
                               name="alpha")
        self.level_embeds = Parameter(initializer(Normal(1.0), (num_levels, embed_dim), ms.float32),
                                      name="level_embeds")
        self.tgt_embed = nn.Embedding(num_queries, embed_dim)
        self.enc_output = nn.Dense(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm((embed_dim,), epsilon=1e-5)
        self.enc_mask_predictor = MaskPredictor(embed_dim, embed_dim)
        self.encoder = FocusDETREncoder(class_embed[-1], embed_dim, num_heads, feedforward_dim, enc_layers,
                                        num_levels, num_points, dropout, oesm_topk, token_selection=token_selection,
                                        oesm_classes=oesm_classes, value_from_memory=value_from_memory)
        self.decoder = FocusDETRDecoder(bbox_embed, embed_dim, num_heads, feedforward_dim, dec_layers, num_levels,
                                        num_points, dropout)
        self.class_head = class_embed[-1]
        self.box_head = bbox_embed[-1]

    def _process_memory(self, memory, invalid):
        # detrex zeroes padded tokens and tokens with an out-of-range default proposal, then projects + norms.
        memory = ops.masked_fill(memory, expand_to(invalid.expand_dims(-1), memory.shape), 0.0)
        return self.enc_output_norm(self.enc_output(memory))

    def construct(self, feats, masks, poses, rho: float, cascade: Tuple[float, ...], dn_query=None,
                  dn_ref_unact=None, attn_mask=None):
        """Run the transformer on the neck levels.

        Args:
            feats (tuple[Tensor[float32]]): ``[B, C, H_l, W_l]`` per level.
            masks (tuple[Tensor[bool]]): ``[B, H_l, W_l]``, True on padding.
            poses (tuple[Tensor[float32]]): ``[B, C, H_l, W_l]`` sine position embeddings.
            rho: foreground keep ratio.
            cascade: per-encoder-layer ratios.
            dn_query (Tensor[float32] or None): ``[B, S, C]`` denoising queries put before the matching ones.
            dn_ref_unact (Tensor[float32] or None): ``[B, S, 4]`` their inverse-sigmoid reference boxes.
            attn_mask (Tensor[bool] or None): ``[S + Q, S + Q]`` decoder self-attention mask.

        Returns:
            tuple: ``hidden [D, B, S + Q, C]``, ``init_ref [B, S + Q, 4]``, ``inter_refs [D, B, S + Q, 4]``,
            ``enc_target [B, Q, C]``, ``enc_boxes [B, Q, 4]``, ``foreground_logits [B, N]``, ``mask_flatten [B, N]``
            (``S = 0`` without denoising).
        """
        batch = feats[0].shape[0]
        spatial_shapes = tuple((int(f.shape[2]), int(f.shape[3])) for f in feats)
        feat_flatten = ops.concat([f.reshape(batch, self.embed_dim, -1).transpose(0, 2, 1) for f in feats], axis=1)
        mask_flatten = ops.concat([m.reshape(batch, -1) for m in masks], axis=1)
        # The level embedding is expanded before the add (broadcasting adds are costly in CPU graphs).
        pos_flatten = ops.concat(
            [p.reshape(batch, self.embed_dim, -1).transpose(0, 2, 1)
             + expand_to(self.level_embeds[lvl].reshape(1, 1, -1), (batch, p.shape[2] * p.shape[3], self.embed_dim))
             for lvl, p in enumerate(poses)], axis=1)
        num_tokens = feat_flatten.shape[1]
        if self.num_queries > num_tokens:
            raise ValueError(f"num_queries={self.num_queries} exceeds the {num_tokens} tokens of this input size")
        valid_ratios = ops.stack([valid_ratios_of(m) for m in masks], axis=1)
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
        proposals, proposal_valid = encoder_output_proposals(mask_flatten, spatial_shapes)
        invalid = ops.logical_not(proposal_valid)

        if self.token_selection:
            # Foreground token selection on the processed (feature + position) tokens.
            fts_memory = self._process_memory(feat_flatten + pos_flatten, invalid)
            if self.weighted_memory:
                fg_logits = weighted_memory_foreground_scores(fts_memory, mask_flatten, spatial_shapes,
                                                              self.enc_mask_predictor, self.alpha)
            else:
                fg_logits = top_down_foreground_scores(fts_memory, mask_flatten, spatial_shapes,
                                                       self.enc_mask_predictor, self.alpha)
            indices, layer_valid, _ = select_foreground_tokens(fg_logits, mask_flatten, rho, cascade)
            memory = self.encoder(feat_flatten, pos_flatten, mask_flatten, reference_points, fg_logits, indices,
                                  layer_valid, spatial_shapes)
        else:
            fg_logits = ops.zeros(mask_flatten.shape, ms.float32)
            memory = self.encoder(feat_flatten, pos_flatten, mask_flatten, reference_points, fg_logits, None, None,
                                  spatial_shapes)

        # Two-stage query selection.
        output_memory = self._process_memory(memory, invalid)
        enc_class = self.class_head(output_memory)
        enc_coord_unact = self.box_head(output_memory) + proposals
        _, topk = ops.topk(enc_class.max(axis=-1), self.num_queries, dim=1, largest=True, sorted=True)
        topk = topk.astype(ms.int32)
        topk_coords_unact = gather_tokens(enc_coord_unact, topk)
        init_ref = ops.sigmoid(ops.stop_gradient(topk_coords_unact))
        enc_target = gather_tokens(output_memory, topk)
        target = ops.broadcast_to(self.tgt_embed.embedding_table.expand_dims(0),
                                  (batch, self.num_queries, self.embed_dim))
        if dn_query is not None:
            target = ops.concat((dn_query, target), axis=1)
            init_ref = ops.concat((ops.sigmoid(dn_ref_unact), init_ref), axis=1)
        hidden, inter_refs = self.decoder(target, memory, mask_flatten, init_ref, valid_ratios, spatial_shapes,
                                          attn_mask)
        return (hidden, init_ref, inter_refs, enc_target, ops.sigmoid(topk_coords_unact), fg_logits, mask_flatten)


class FocusDETRWithLoss(nn.Cell):
    """Training forward + loss of Focus-DETR: the targets reach the network for the denoising queries.

    The ``train_network`` of the zoo's :class:`~src.models.contract.Detector`: ``(image, mask, tgt_boxes,
    tgt_labels, tgt_valid) -> (loss, loss_terms)``. Raw dataset labels are mapped to the heads' contiguous classes by
    the criterion's table, the network runs with denoising (when its ``dn_number > 0``), and the loss is the
    criterion's matching / encoder / foreground loss plus
    :meth:`src.models.focus_detr.criterion.FocusDETRCriterion.denoising_loss`. Built with ``auto_prefix=False``, so
    parameter names are the network's.

    Args:
        network: the :class:`FocusDETR` (the same Cell the inference network holds).
        criterion: a :class:`src.models.focus_detr.criterion.FocusDETRCriterion`.

    Outputs:
        tuple: ``loss`` float32 scalar and ``loss_terms`` float32 ``[3]`` (final-layer matching terms, unweighted).
    """

    def __init__(self, network: FocusDETR, criterion: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.criterion = criterion
        self.use_dn = network.use_dn

    def construct(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        if not self.use_dn:
            outputs = self.network(image, mask)
            return self.criterion(outputs, mask, tgt_boxes, tgt_labels, tgt_valid)
        labels = self.criterion.contiguous_labels(tgt_labels)
        outputs, dn_outputs = self.network(image, mask, tgt_boxes, labels, tgt_valid)
        return self.criterion(outputs, mask, tgt_boxes, tgt_labels, tgt_valid, dn_outputs)


def build_detector(model_cfg: dict, loss_cfg: dict, catalog, distributed: bool = False, seed: int = 0) -> Detector:
    """The :class:`~src.models.contract.Detector` of a ``focus_detr`` config, from its ``model`` and ``loss`` sections.

    The network is :class:`FocusDETR` itself (``(image, mask)``: no denoising queries); training runs
    :class:`FocusDETRWithLoss`, whose forward pass takes the targets for the denoising queries.

    Args:
        model_cfg: the config's ``model`` section, ``num_classes`` resolved (:func:`src.models.build_model`).
        loss_cfg: the config's ``loss`` section.
        catalog: the dataset's :class:`src.data.catalog.Catalog`: its ids are the heads' classes unless
            ``model.labels_are_category_ids``.
        distributed: average the criterion's box count over ranks.
        seed: unused (the denoising noise follows MindSpore's global seed).
    """
    section = model_cfg
    model_cfg = {k: v for k, v in section.items()
                 if k not in ("name", "aux_loss", "num_select", "labels_are_category_ids")}
    model_cfg["cascade"] = tuple(model_cfg["cascade"])
    network = FocusDETR(**model_cfg)
    by_id = section["labels_are_category_ids"]
    criterion = build_criterion(num_classes=model_cfg["num_classes"], aux_loss=section["aux_loss"],
                                distributed=distributed,
                                label_table=np.arange(model_cfg["num_classes"]) if by_id
                                else catalog.id_to_label_table(), **loss_cfg)
    category_ids = range(model_cfg["num_classes"]) if by_id else catalog.ids
    postprocess = FocusDetectorPostProcess(section["num_select"], category_ids)
    return Detector(network, postprocess, FocusDETRWithLoss(network, criterion),
                    ("loss_class", "loss_bbox", "loss_giou"))


class _Features(nn.Cell):
    """Focus-DETR's backbone + neck as one Cell, so unpadded inference compiles them as one graph (a tuple passed
    between two compiled graphs would compile again for every image size)."""

    def __init__(self, backbone: nn.Cell, neck: nn.Cell):
        super().__init__(auto_prefix=False)
        self.backbone = backbone
        self.neck = neck

    def construct(self, image):
        return self.neck(self.backbone(image))


def unpadded_parts(net) -> list:
    """The parts of Focus-DETR's inference network that compile once for every image size (see
    :mod:`src.models.contract`): the ResNet backbone and the neck, as one graph.

    detrex-style token selection needs each level's size as Python integers, so the transformer and post-process
    run eagerly; a Swin backbone, whose window padding needs them too, runs eagerly as well (no part). ``net``'s
    :class:`FocusDETR` then calls the compiled Cell from :meth:`FocusDETR.features`.

    Args:
        net: the :class:`src.models.contract.InferenceNet` of :func:`build_detector`.

    Returns:
        ``[(cell, (DYNAMIC_IMAGE,))]``, or ``[]`` for a Swin backbone.
    """
    focus = net.network
    if not isinstance(focus.backbone, MultiLevelResNet):
        return []
    features = _Features(focus.backbone, focus.neck)
    object.__setattr__(focus, "features", features)  # this instance's features() becomes the Cell, not a child Cell
    return [(features, (DYNAMIC_IMAGE,))]
