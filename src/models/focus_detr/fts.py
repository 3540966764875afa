"""Foreground Token Selector (FTS) of Focus-DETR (Zheng et al., ICCV 2023, section 3.2).

Follows detrex ``projects/focus_detr/modeling/focus_detr_transformer.py`` (``FOCUS_DETRTransformer.forward``,
the ``focus_rho`` branch, and ``MaskPredictor``) and ``foreground_supervision.py`` (``GenTargets``):

1. A :class:`MaskPredictor` gives one foreground logit per encoder token.
2. Top-down score modulation (:func:`top_down_foreground_scores`): the coarsest level is scored first; every
   finer level ``l`` has its *tokens* rescaled by ``1 + alpha * up(s_{l+1})`` before it is scored, where
   ``s_{l+1}`` is the raw logit map of the next coarser level (itself already modulated) and ``up`` is bilinear
   upsampling with ``align_corners=True``. The scores themselves are never added to each other.
3. Cascade selection (:func:`select_foreground_tokens`): one descending top-k over the flattened scores; encoder
   layer ``j`` uses the first ``k_j`` indices, so the per-layer sets are nested. Shapes are static; a boolean
   validity mask per image tells which of the ``k_j`` slots are really selected for that image.
4. Foreground labels (:func:`fcos_foreground_labels`): FCOS-style binary labels per token from the GT boxes.

Spatial shapes are static Python tuples of ``(H_l, W_l)`` in level order (finest first, stride 8, 16, 32, 64).
"""

from typing import Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype
from mindspore.common.initializer import Uniform, XavierUniform

from src.layers.expand import expand_to
from src.layers.ms_deform_attn import level_start_indices

FOCUS_RHO = 0.5
CASCADE_RATIOS = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)
FCOS_STRIDES = (8, 16, 32, 64)
# Upper bound of the last range is the reference's "infinity"; bounds are (lo, hi], in input-image pixels.
FCOS_LIMIT_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 999999.0))


class _ExactGELU(nn.Cell):
    """``x * Phi(x)`` with the erf form, as torch ``nn.GELU()`` (MindSpore's ``nn.GELU`` defaults to tanh)."""

    def construct(self, x):
        return ops.gelu(x, approximate="none")


def _dense(in_dim: int, out_dim: int) -> nn.Dense:
    """Linear layer with the reference's init: Xavier-uniform weight (the transformer re-inits every matrix)."""
    bound = 1.0 / np.sqrt(in_dim)
    return nn.Dense(in_dim, out_dim, weight_init=XavierUniform(), bias_init=Uniform(bound))


class MaskPredictor(nn.Cell):
    """Per-token foreground logit with a local/global channel split (detrex ``MaskPredictor``).

    ``z = GELU(Linear(LayerNorm(x)))``; the first ``h/2`` channels of ``z`` stay per token (local), the last
    ``h/2`` are replaced by their mean over the tokens of the input (global context, broadcast back to every
    token); the concatenation goes through ``Linear(h, h/2) - GELU - Linear(h/2, h/4) - GELU - Linear(h/4, 1)``.

    Parameter names mirror the torch module (``layer1.0`` LayerNorm as ``gamma/beta``, ``layer1.1``,
    ``layer2.{0,2,4}`` Linear layers), so a checkpoint converts with the usual LayerNorm rename only.

    Args:
        in_dim: token channels.
        h_dim: hidden channels, even.
        pool_padding: True (the reference) averages the global half over every token, padding included; False
            averages over the valid tokens only.
    """

    def __init__(self, in_dim: int = 256, h_dim: int = 256, pool_padding: bool = True):
        super().__init__()
        if h_dim % 4:
            raise ValueError(f"h_dim must be divisible by 4, got {h_dim}")
        self.half = h_dim // 2
        self.pool_padding = pool_padding
        self.layer1 = nn.SequentialCell([nn.LayerNorm((in_dim,), epsilon=1e-5), _dense(in_dim, h_dim), _ExactGELU()])
        self.layer2 = nn.SequentialCell(
            [
                _dense(h_dim, h_dim // 2),
                _ExactGELU(),
                _dense(h_dim // 2, h_dim // 4),
                _ExactGELU(),
                _dense(h_dim // 4, 1),
            ]
        )

    def construct(self, x, padding_mask):
        """Foreground logits.

        Args:
            x (Tensor[float32]): ``[B, T, in_dim]`` tokens of one feature level.
            padding_mask (Tensor[bool]): ``[B, T]``, True on padding; used only when ``pool_padding`` is False.

        Returns:
            Tensor[float32]: ``[B, T]`` raw logits.
        """
        z = self.layer1(x)
        z_local = z[:, :, : self.half]
        z_global = z[:, :, self.half :]
        if self.pool_padding:
            pooled = z_global.mean(axis=1, keep_dims=True)
        else:
            weight = ops.logical_not(padding_mask).astype(z.dtype).expand_dims(-1)
            count = ops.maximum(weight.sum(axis=1, keepdims=True), 1.0)
            pooled = (z_global * weight).sum(axis=1, keepdims=True) / count
        z_global = expand_to(pooled, z_global.shape)
        return self.layer2(ops.concat((z_local, z_global), axis=-1)).squeeze(-1)


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
    """1-D linear interpolation matrix with ``align_corners=True`` (end samples map onto end samples).

    Args:
        in_size: source length.
        out_size: target length.

    Returns:
        np.ndarray[float32]: ``[out_size, in_size]``; ``out = M @ in`` interpolates a 1-D signal.
    """
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    if in_size == 1 or out_size == 1:
        matrix[:, 0] = 1.0
        return matrix.astype(np.float32)
    pos = np.arange(out_size, dtype=np.float64) * (in_size - 1) / (out_size - 1)
    low = np.minimum(np.floor(pos).astype(np.int64), in_size - 2)
    frac = pos - low
    rows = np.arange(out_size)
    matrix[rows, low] = 1.0 - frac
    matrix[rows, low + 1] += frac
    return matrix.astype(np.float32)


def upsample_align_corners(score_map, out_hw: Tuple[int, int]):
    """Bilinear resize with ``align_corners=True`` as two constant matrix products (separable, static shapes).

    Equals torch ``F.interpolate(x, size, mode='bilinear', align_corners=True)``, which the reference's
    ``upsamplelike`` uses; differentiable through plain matmuls.

    Args:
        score_map (Tensor[float32]): ``[B, h, w]``.
        out_hw: static ``(H, W)``.

    Returns:
        Tensor[float32]: ``[B, H, W]``.
    """
    in_h, in_w = score_map.shape[1], score_map.shape[2]
    rows = Tensor(align_corners_matrix(in_h, out_hw[0]))
    cols_t = Tensor(align_corners_matrix(in_w, out_hw[1]).T)
    return ops.matmul(ops.matmul(rows, score_map), cols_t)


def top_down_foreground_scores(memory, padding_mask, spatial_shapes: Sequence[Tuple[int, int]], mask_predictor,
                               alpha):
    """Foreground logits of every token with top-down modulation (coarsest level first).

    With ``L`` levels: ``s_{L-1} = MP(m_{L-1})``; for ``l = L-2 .. 0``:
    ``m_l' = m_l + m_l * up(s_{l+1}) * alpha[L-2-l]`` and ``s_l = MP(m_l')`` — the memory of the finer level is
    rescaled by the upsampled raw logits of the (already modulated) coarser level, as in the reference.

    Args:
        memory (Tensor[float32]): ``[B, N, C]`` flattened tokens, levels in order (finest first); in the full model
            this is ``enc_output_norm(enc_output(features + level pos))`` with padding zeroed before the linear.
        padding_mask (Tensor[bool]): ``[B, N]``, True on padding (passed to the predictor's global pooling).
        spatial_shapes: static ``(H_l, W_l)`` per level, ``sum(H_l * W_l) == N``.
        mask_predictor (MaskPredictor): the shared predictor (``transformer.enc_mask_predictor``).
        alpha (Parameter[float32]): ``[L-1]`` modulation strengths (``transformer.alpha``).

    Returns:
        Tensor[float32]: ``[B, N]`` raw logits, level order as ``memory`` (the reference's
        ``temp_backbone_mask_prediction`` squeezed).
    """
    starts = level_start_indices(spatial_shapes)
    num_levels = len(spatial_shapes)
    batch = memory.shape[0]
    scores = ()
    coarse = None
    for lvl in range(num_levels - 1, -1, -1):
        height, width = spatial_shapes[lvl]
        begin, end = starts[lvl], starts[lvl] + height * width
        mem = memory[:, begin:end]
        if coarse is not None:
            up = upsample_align_corners(coarse, (height, width)).reshape(batch, height * width, 1)
            # Expanded before the multiply: a broadcasting one over [B, H*W, C] is costly in CPU graphs.
            mem = mem + mem * expand_to(up, mem.shape) * alpha[num_levels - 2 - lvl]
        score = mask_predictor(mem, padding_mask[:, begin:end])
        scores = (score,) + scores
        coarse = score.reshape(batch, height, width)
    return ops.concat(scores, axis=1)


def half_pixel_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps of a 1-D linear resize with half-pixel centres (``align_corners=False``), edges clamped.

    Output sample ``i`` reads source position ``p = (i + 0.5) * in_size / out_size - 0.5`` clamped to
    ``[0, in_size - 1]``, as torch ``F.interpolate(mode='bilinear', align_corners=False)`` and MindSpore's
    ``half_pixel`` mode: ``out[i] = (1 - f) * in[floor(p)] + f * in[min(floor(p) + 1, in_size - 1)]``.

    Args:
        in_size: source length.
        out_size: target length.

    Returns:
        tuple: ``(low int32 [out_size], high int32 [out_size], frac float32 [out_size])``.
    """
    pos = (np.arange(out_size, dtype=np.float64) + 0.5) * in_size / out_size - 0.5
    pos = np.clip(pos, 0.0, in_size - 1)
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low.astype(np.int32), high.astype(np.int32), (pos - low).astype(np.float32)


def weighted_memory_foreground_scores(memory, padding_mask, spatial_shapes: Sequence[Tuple[int, int]],
                                      mask_predictor, alpha):
    """Foreground logits with the MindSpore model zoo's top-down modulation (its 5-scale Focus-DETR).

    Follows ``DeformableTransformer.construct`` of linxid/Focus-DETR-mindspore (``models/focus_detr/
    deformable_transformer.py``, the model zoo's ``research/cv/Focus-DETR``). Coarsest level first:
    ``s_{L-1} = MP(m_{L-1})``; for ``l = L-2 .. 0``: ``m_l' = m_l + alpha[max(0, L-3-l)] * U_l(s_{l+1} * m_{l+1}')``
    and ``s_l = MP(m_l')``. Unlike detrex (:func:`top_down_foreground_scores`), what is carried down is the
    score-weighted memory of the coarser level (``[N_{l+1}, C]``), and ``U_l`` resizes it along the FLATTENED
    token axis (the port runs a bilinear half-pixel resize on a ``[B, 1, N_{l+1}, C]`` tensor to ``(N_l, C)``,
    which is a 1-D linear resize of the token sequence), not over the 2-D map. Alpha has ``L - 2`` entries; the
    two coarsest steps share ``alpha[0]`` (for 5 levels: 0, 0, 1, 2).

    Args:
        memory (Tensor[float32]): ``[B, N, C]`` processed flattened tokens, finest level first.
        padding_mask (Tensor[bool]): ``[B, N]``, True on padding (passed to the predictor's pooling).
        spatial_shapes: static ``(H_l, W_l)`` per level.
        mask_predictor (MaskPredictor): the shared predictor.
        alpha (Parameter[float32]): ``[L-2]`` modulation strengths.

    Returns:
        Tensor[float32]: ``[B, N]`` raw logits in token order.
    """
    starts = level_start_indices(spatial_shapes)
    num_levels = len(spatial_shapes)
    scores = ()
    carried = None
    for lvl in range(num_levels - 1, -1, -1):
        height, width = spatial_shapes[lvl]
        begin, end = starts[lvl], starts[lvl] + height * width
        mem = memory[:, begin:end]
        if carried is not None:
            low, high, frac = half_pixel_taps(carried.shape[1], height * width)
            shape = (carried.shape[0], height * width, carried.shape[2])
            frac = expand_to(Tensor(frac).reshape(1, -1, 1), shape)
            resized = ops.gather(carried, Tensor(low), 1) * (1.0 - frac) + ops.gather(carried, Tensor(high), 1) * frac
            mem = mem + resized * alpha[max(0, num_levels - 3 - lvl)]
        score = mask_predictor(mem, padding_mask[:, begin:end])
        scores = (score,) + scores
        carried = expand_to(score.expand_dims(-1), mem.shape) * mem  # [B, N_l, C]
    return ops.concat(scores, axis=1)


def cascade_topk_sizes(num_tokens: int, rho: float = FOCUS_RHO,
                       cascade: Sequence[float] = CASCADE_RATIOS) -> Tuple[int, ...]:
    """Static number of top-k slots per encoder layer.

    The reference keeps ``int(n_valid * rho) + 1`` tokens per image and takes, at layer ``j``,
    ``int(cascade[j] * K)`` with ``K`` the batch maximum (in float32). With static shapes ``K`` is bounded by
    the token count ``N`` of the padded input, so the static sizes are ``int(cascade[j] * K_static)``, with
    ``K_static = min(int(N * rho) + 1, N)``, computed in float32 like the reference.

    Args:
        num_tokens: ``N``, tokens of the padded input over all levels.
        rho: keep ratio of valid tokens.
        cascade: per-layer ratios, non-increasing.

    Returns:
        tuple[int]: ``k_j`` per layer, non-increasing.
    """
    k_static = min(int(num_tokens * rho) + 1, num_tokens)
    return tuple(int(np.float32(ratio) * np.float32(k_static)) for ratio in cascade)


def select_foreground_tokens(scores, padding_mask, rho: float = FOCUS_RHO, cascade: Sequence[float] = CASCADE_RATIOS):
    """Cascade foreground token selection with static shapes.

    Padded tokens get ``-inf`` and rank last. One sorted top-k of ``k_0`` slots is taken; layer ``j`` uses the
    first ``k_j`` (so its set is a subset of layer ``j-1``'s). Per image, layer ``j`` really selects
    ``min(floor(cascade[j] * K), n_i)`` slots, with ``n_i = min(int(valid_i * rho) + 1, valid_i)`` and ``K`` the
    batch maximum of ``n_i`` — the reference's counts (it gathers ``int(cascade[j] * K)`` tokens and scatters
    back at most ``n_i`` of them); the remaining slots are flagged invalid.

    Args:
        scores (Tensor[float32]): ``[B, N]`` foreground logits.
        padding_mask (Tensor[bool]): ``[B, N]``, True on padding.
        rho: keep ratio of valid tokens (0.5).
        cascade: per-layer ratios.

    Returns:
        tuple: ``(indices, layer_valid, focus_nums)``:
            - indices (Tensor[int32]): ``[B, k_0]`` token indices sorted by descending score.
            - layer_valid (tuple[Tensor[bool]]): per layer ``[B, k_j]``, True where slot is selected for that
              image; ``k_j`` from :func:`cascade_topk_sizes`.
            - focus_nums (Tensor[int32]): ``[B]`` tokens kept per image (``n_i``).
    """
    num_tokens = scores.shape[1]
    sizes = cascade_topk_sizes(num_tokens, rho, cascade)
    neg_inf = ops.full_like(scores, float("-inf"))
    ranked = ops.select(padding_mask, neg_inf, scores)
    _, indices = ops.topk(ranked, sizes[0], dim=1, largest=True, sorted=True)
    valid_f = ops.logical_not(padding_mask).astype(mstype.float32).sum(axis=1)
    focus = ops.minimum(ops.floor(valid_f * rho) + 1.0, valid_f)
    batch_max = focus.max()
    layer_valid = []
    for ratio, size in zip(cascade, sizes):
        count = ops.minimum(ops.floor(batch_max * ratio), focus)
        slots = Tensor(np.arange(size, dtype=np.float32)).reshape(1, size)
        layer_valid.append(slots < count.reshape(-1, 1))
    return indices.astype(mstype.int32), tuple(layer_valid), focus.astype(mstype.int32)


def fcos_foreground_labels(tgt_boxes, tgt_valid, image_sizes, spatial_shapes: Sequence[Tuple[int, int]],
                           strides: Sequence[int] = FCOS_STRIDES,
                           limit_ranges: Sequence[Tuple[float, float]] = FCOS_LIMIT_RANGES):
    """Binary FCOS-style foreground label per encoder token (detrex ``GenTargets`` with one class).

    Token ``(i, j)`` of a level with stride ``s`` sits at pixel ``(x, y) = (j*s + s//2, i*s + s//2)`` of the
    resized input image. With ``(l, t, r, b)`` its distances to the left/top/right/bottom sides of a box, the
    token is foreground for that box when it lies strictly inside (``min(l, t, r, b) > 0``) and the box's scale
    falls in the level's range (``lo < max(l, t, r, b) <= hi``). The reference's centre sampling is computed but
    unused there, so it is not applied here. A token is foreground if any valid box claims it (the reference
    picks the smallest box, which does not matter for a binary label).

    Args:
        tgt_boxes (Tensor[float32]): ``[B, M, 4]`` normalized cxcywh relative to the unpadded resized image.
        tgt_valid (Tensor[bool]): ``[B, M]``, True for real boxes.
        image_sizes (Tensor[float32]): ``[B, 2]`` unpadded resized image ``(h, w)`` in pixels.
        spatial_shapes: static ``(H_l, W_l)`` per level of the padded feature maps.
        strides: pixel stride per level.
        limit_ranges: ``(lo, hi]`` of ``max(l, t, r, b)`` per level, pixels.

    Returns:
        Tensor[float32]: ``[B, N]`` labels in {0, 1}, level order as the flattened tokens.

    Raises:
        ValueError: if the numbers of levels, strides and ranges differ.
    """
    if not len(spatial_shapes) == len(strides) == len(limit_ranges):
        raise ValueError("spatial_shapes, strides and limit_ranges need one entry per level")
    height = image_sizes[:, 0:1]
    width = image_sizes[:, 1:2]
    cx, cy = tgt_boxes[:, :, 0] * width, tgt_boxes[:, :, 1] * height
    half_w, half_h = tgt_boxes[:, :, 2] * width * 0.5, tgt_boxes[:, :, 3] * height * 0.5
    x0, y0, x1, y1 = (v.expand_dims(1) for v in (cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    labels = []
    for (feat_h, feat_w), stride, (low, high) in zip(spatial_shapes, strides, limit_ranges):
        ys, xs = np.meshgrid(np.arange(feat_h), np.arange(feat_w), indexing="ij")
        # Every operand expanded to [B, N_l, T] first: broadcasting element-wise kernels keep index tables of
        # the output's size in a compiled CPU graph (src/layers/expand.py).
        shape = (tgt_boxes.shape[0], feat_h * feat_w, tgt_boxes.shape[1])
        px = expand_to(Tensor((xs.reshape(1, -1, 1) * stride + stride // 2).astype(np.float32)), shape)
        py = expand_to(Tensor((ys.reshape(1, -1, 1) * stride + stride // 2).astype(np.float32)), shape)
        offsets = ops.stack((px - expand_to(x0, shape), py - expand_to(y0, shape),
                             expand_to(x1, shape) - px, expand_to(y1, shape) - py), axis=-1)
        inside = offsets.min(axis=-1) > 0
        extent = offsets.max(axis=-1)
        in_level = ops.logical_and(extent > low, extent <= high)
        positive = ops.logical_and(ops.logical_and(inside, in_level), expand_to(tgt_valid.expand_dims(1), shape))
        labels.append(positive.any(axis=-1).astype(mstype.float32))
    return ops.concat(labels, axis=1)
