"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, section 4.1 / eq. 3).

Each query attends to a small fixed set of sampled points: per head ``h``, level ``l`` and point ``p`` a location
``reference_point + offset`` is read from the level's value map by bilinear interpolation and the samples are
mixed with softmax weights predicted from the query. This module is a framework-only port of the pure-PyTorch
fallback that detrex (``detrex/layers/multi_scale_deform_attn.py``, ``multi_scale_deformable_attn_pytorch`` and
``MultiScaleDeformableAttention``) and Deformable DETR (``models/ops/modules/ms_deform_attn.py``) ship next to
their CUDA kernel; sampling uses ``ops.grid_sample`` (bilinear, zero padding, ``align_corners=False``).

Spatial shapes are static: the feature-map sizes of every level are a Python tuple of ``(H, W)`` pairs, so the
level split points are Python ints and graph mode compiles one program per input size (the data pipeline pads
to a few static bucket shapes anyway).
"""

import math
from typing import Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import XavierUniform

from src.layers.attention import SoftmaxLastAxis
from src.layers.channel_first import dense_into_channel_first, dense_out_of_channel_first
from src.layers.expand import expand_to

SpatialShapes = Tuple[Tuple[int, int], ...]


def level_start_indices(spatial_shapes: Sequence[Sequence[int]]) -> Tuple[int, ...]:
    """Offsets of each level in the flattened token sequence.

    Args:
        spatial_shapes: ``(H_l, W_l)`` per level, Python ints.

    Returns:
        tuple[int]: ``L`` start indices; level ``l`` occupies tokens ``[start_l, start_l + H_l * W_l)``.
    """
    starts = []
    total = 0
    for height, width in spatial_shapes:
        starts.append(total)
        total += int(height) * int(width)
    return tuple(starts)


def multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights):
    """Core sampling-and-weighting step of multi-scale deformable attention (no projections).

    Bilinearly samples every level of ``value`` at ``sampling_locations`` (zero outside the map, pixel centres at
    ``(i + 0.5) / size``) and sums the samples weighted by ``attention_weights`` over levels and points.

    Args:
        value (Tensor[float32]): ``[B, h, d, S]`` flattened multi-level values, heads channel-first (no
            ``Transpose`` is needed to cut them into ``grid_sample``'s ``[B*h, d, H_l, W_l]`` maps; see
            ``src/layers/channel_first.py``), ``S = sum(H_l * W_l)`` in level order, row-major inside a level.
        spatial_shapes (tuple[tuple[int, int]]): static ``(H_l, W_l)`` per level (Python ints, not a Tensor).
        sampling_locations (Tensor[float32]): ``[B, Q, h, L, P, 2]`` normalized ``(x, y)`` in ``[0, 1]`` relative
            to each level's (padded) map; values outside sample zeros.
        attention_weights (Tensor[float32]): ``[B, Q, h, L, P]``, usually softmax-normalized over ``L * P``.

    Returns:
        Tensor[float32]: ``[B, h * d, Q]``, heads concatenated (head-major) and channel-first, ready for
        ``dense_out_of_channel_first``.
    """
    batch, num_heads, head_dim, num_tokens = value.shape
    value = value.reshape(batch * num_heads, head_dim, num_tokens)
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    starts = level_start_indices(spatial_shapes)
    # grid_sample expects coordinates in [-1, 1].
    grids = sampling_locations * 2.0 - 1.0
    samples = []
    for level in range(num_levels):
        height, width = spatial_shapes[level]
        start = starts[level]
        value_l = value[:, :, start:start + height * width].reshape(batch * num_heads, head_dim, height, width)
        # [B, Q, h, P, 2] -> [B, h, Q, P, 2] -> [B*h, Q, P, 2]
        grid_l = grids[:, :, :, level].transpose(0, 2, 1, 3, 4).reshape(batch * num_heads, num_queries, num_points, 2)
        samples.append(ops.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*h, d, Q, L, P] -> [B*h, d, Q, L*P]
    sampled = ops.stack(samples, axis=-2).reshape(batch * num_heads, head_dim, num_queries, num_levels * num_points)
    # [B, Q, h, L, P] -> [B, h, Q, L*P] -> [B*h, 1, Q, L*P]
    weights = attention_weights.transpose(0, 2, 1, 3, 4).reshape(
        batch * num_heads, 1, num_queries, num_levels * num_points
    )
    # Expanded to the samples' shape before the multiply: on MindSpore's CPU backend a broadcasting multiply over
    # this (largest) tensor keeps several copies of it for the life of a compiled graph (benchmarks/README.md).
    return (sampled * expand_to(weights, sampled.shape)).sum(-1).reshape(batch, num_heads * head_dim, num_queries)


def _grid_init_bias(num_heads: int, num_levels: int, num_points: int) -> np.ndarray:
    """Initial sampling-offset bias: head ``i`` looks along direction ``2*pi*i/h``, point ``p`` at distance p+1.

    The direction vector is scaled so its larger component is 1 (points sit on a square ring of the pixel grid),
    the same for every level. Returns float32 ``[h * L * P * 2]`` in the ``(head, level, point, xy)`` order that
    the forward pass reshapes into.
    """
    thetas = np.arange(num_heads, dtype=np.float32) * np.float32(2.0 * math.pi / num_heads)
    directions = np.stack([np.cos(thetas), np.sin(thetas)], -1)
    directions = directions / np.abs(directions).max(-1, keepdims=True)
    scale = np.arange(1, num_points + 1, dtype=np.float32)[None, None, :, None]
    grid = np.broadcast_to(directions[:, None, None, :], (num_heads, num_levels, num_points, 2)) * scale
    return grid.reshape(-1).astype(np.float32)


class MSDeformAttn(nn.Cell):
    """Multi-scale deformable attention block with detrex's residual semantics.

    Follows detrex ``MultiScaleDeformableAttention`` (batch-first): ``value_proj`` on the value tokens (zeroed at
    padding), ``sampling_offsets`` and ``attention_weights`` predicted from ``query + query_pos``, the core
    sampling, ``output_proj``, dropout, and ``identity + out`` (the residual is inside the block). Parameter
    names and ``nn.Dense`` weight layouts ``[out, in]`` match detrex's ``nn.Linear`` keys one to one.

    Initialisation as in the paper's code: offset weights zero and bias on a ring of directions per head
    (:func:`_grid_init_bias`), attention-weight projection all zero (uniform weights), value/output projections
    xavier-uniform with zero bias.

    Args:
        embed_dim: Model width ``C``; must be divisible by ``num_heads``.
        num_heads: Heads ``h``.
        num_levels: Feature levels ``L``.
        num_points: Sampling points per head and level ``P``.
        dropout: Dropout on the projected output before the residual (training only).

    Inputs:
        query (Tensor[float32]): ``[B, Q, C]``.
        value (Tensor[float32]): ``[B, S, C]`` flattened multi-level features, ``S = sum(H_l * W_l)``.
        reference_points (Tensor[float32]): ``[B, Q, L, 2]`` normalized ``(x, y)``, or ``[B, Q, L, 4]``
            normalized ``(cx, cy, w, h)`` boxes (offsets are then scaled by ``0.5 * wh / P``).
        spatial_shapes (tuple[tuple[int, int]]): static ``(H_l, W_l)`` per level.
        key_padding_mask (Tensor[bool] or None): ``[B, S]``, True on padding tokens (their values become 0).
        query_pos (Tensor[float32] or None): ``[B, Q, C]`` added to the query before predicting offsets/weights.
        identity (Tensor[float32] or None): ``[B, Q, C]`` residual input; defaults to ``query`` (without pos).

    Outputs:
        Tensor[float32]: ``[B, Q, C]`` = ``identity + dropout(output_proj(attention))``.

    Raises:
        ValueError: If ``embed_dim`` is not divisible by ``num_heads``, or (while tracing) the last dimension of
            ``reference_points`` is neither 2 nor 4.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.head_dim = embed_dim // num_heads
        num_offsets = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Dense(embed_dim, num_offsets * 2, weight_init="zeros",
                                         bias_init=Tensor(_grid_init_bias(num_heads, num_levels, num_points)))
        self.attention_weights = nn.Dense(embed_dim, num_offsets, weight_init="zeros", bias_init="zeros")
        self.value_proj = nn.Dense(embed_dim, embed_dim, weight_init=XavierUniform(), bias_init="zeros")
        self.output_proj = nn.Dense(embed_dim, embed_dim, weight_init=XavierUniform(), bias_init="zeros")
        self.softmax = SoftmaxLastAxis()
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, query, value, reference_points, spatial_shapes: SpatialShapes,
                  key_padding_mask: Optional[Tensor] = None, query_pos: Optional[Tensor] = None,
                  identity: Optional[Tensor] = None):
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        batch, num_queries, _ = query.shape
        num_tokens = value.shape[1]
        h, lv, p = self.num_heads, self.num_levels, self.num_points

        value = dense_into_channel_first(value, self.value_proj.weight, self.value_proj.bias)  # [B, C, S]
        if key_padding_mask is not None:
            value = ops.masked_fill(value, expand_to(key_padding_mask[:, None], value.shape), 0.0)
        value = value.reshape(batch, h, self.head_dim, num_tokens)

        offsets = self.sampling_offsets(query).reshape(batch, num_queries, h, lv, p, 2)
        weights = self.attention_weights(query).reshape(batch, num_queries, h, lv * p)
        weights = self.softmax(weights).reshape(batch, num_queries, h, lv, p)

        # Every operand is expanded to the offsets' [B, Q, h, L, P, 2] shape first (``expand_to``): broadcasting
        # element-wise ops over this tensor keep 16-byte index tables per element in a compiled CPU graph.
        shape = offsets.shape
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W_l, H_l), as a product with the reciprocals.
            inverse_size = Tensor([[1.0 / w, 1.0 / hh] for hh, w in spatial_shapes], ms.float32)
            locations = (expand_to(reference_points[:, :, None, :, None, :], shape)
                         + offsets * expand_to(inverse_size[None, None, None, :, None, :], shape))
        elif reference_points.shape[-1] == 4:
            locations = (expand_to(reference_points[:, :, None, :, None, :2], shape)
                         + offsets * expand_to(reference_points[:, :, None, :, None, 2:] * (0.5 / p), shape))
        else:
            raise ValueError("reference_points must end in 2 (points) or 4 (boxes) coordinates")

        out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)  # [B, C, Q]
        out = dense_out_of_channel_first(out, self.output_proj.weight, self.output_proj.bias)
        return identity + self.dropout(out)


__all__ = ["MSDeformAttn", "level_start_indices", "multi_scale_deformable_attention"]

