"""Focus-DETR / DINO decoder: deformable cross-attention, iterative box refinement, look-forward-twice.

Follows detrex ``projects/focus_detr/modeling/focus_detr_transformer.py::FOCUS_DETRTransformerDecoder`` (the DINO
decoder) with ``operation_order = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")``. Per layer:

1. the query position is ``ref_point_head(sine(reference box scaled by the valid ratios))``;
2. self-attention (detrex MHA wrapper, residual inside; in training with the denoising attention mask of
   :mod:`.dn`), norm, deformable cross-attention into the encoder memory with 4-d box references, norm, FFN, norm;
3. the layer's own box head refines the reference: ``new = sigmoid(bbox_embed[i](out) + inverse_sigmoid(ref))``;
   the next layer gets ``new`` with the gradient stopped, while the returned per-layer references keep it
   (look-forward-twice, DINO section 3.5);
4. the returned hidden states go through the shared final LayerNorm.
"""

import math
from typing import Tuple

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype

from src.layers.expand import expand_to
from src.layers.mlp import MLP
from src.layers.ms_deform_attn import MSDeformAttn
from src.models.focus_detr.encoder import FFN, DetrexMHA


def inverse_sigmoid(x, eps: float = 1e-3):
    """``log(x / (1 - x))`` with both terms clamped to ``>= eps`` (detrex ``inverse_sigmoid``, eps 1e-3).

    Args:
        x (Tensor[float32]): values, clamped to ``[0, 1]`` first.
        eps: lower clamp of ``x`` and ``1 - x``.

    Returns:
        Tensor[float32]: same shape, finite.
    """
    x = ops.clamp(x, 0.0, 1.0)
    return ops.log(ops.clamp(x, min=eps) / ops.clamp(1.0 - x, min=eps))


def sine_box_embedding(boxes, num_pos_feats: int = 128, temperature: float = 10000.0):
    """detrex ``get_sine_pos_embed`` of normalized boxes, x and y swapped.

    Every coordinate ``v`` becomes ``num_pos_feats`` channels ``sin/cos(2*pi*v / T^(2*floor(i/2)/F))`` (sin on even,
    cos on odd channels, interleaved); the four blocks are concatenated in the order (y, x, w, h).

    Args:
        boxes (Tensor[float32]): ``[B, Q, 4]`` normalized ``(cx, cy, w, h)``.
        num_pos_feats: channels per coordinate ``F`` (128 in the reference).
        temperature: frequency base.

    Returns:
        Tensor[float32]: ``[B, Q, 4F]``.
    """
    index = np.arange(num_pos_feats, dtype=np.float32)
    dim_t = Tensor(np.power(np.float32(temperature), 2 * np.floor(index / 2) / num_pos_feats).astype(np.float32))
    batch, num_queries, _ = boxes.shape
    blocks = []
    shape = (batch, num_queries, num_pos_feats)
    dim_t = expand_to(dim_t, shape)  # same-shape division: a broadcasting one keeps index tables (expand_to)
    for coord in (1, 0, 2, 3):
        pos = expand_to(boxes[:, :, coord:coord + 1] * (2 * math.pi), shape) / dim_t
        pos = ops.stack((ops.sin(pos[:, :, 0::2]), ops.cos(pos[:, :, 1::2])), axis=3)
        blocks.append(pos.reshape(batch, num_queries, num_pos_feats))
    return ops.concat(blocks, axis=-1)


class FocusDecoderLayer(nn.Cell):
    """DINO decoder layer (names as detrex: ``attentions.{0,1}``, ``norms.{0,1,2}``, ``ffns.0``).

    Args:
        embed_dim: width ``C``.
        num_heads: heads.
        feedforward_dim: FFN hidden width.
        num_levels: feature levels ``L``.
        num_points: deformable sampling points.
        dropout: dropout probability.
    """

    def __init__(self, embed_dim: int, num_heads: int, feedforward_dim: int, num_levels: int, num_points: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.attentions = nn.CellList([
            DetrexMHA(embed_dim, num_heads, dropout),
            MSDeformAttn(embed_dim, num_heads, num_levels, num_points, dropout),
        ])
        self.norms = nn.CellList([nn.LayerNorm((embed_dim,), epsilon=1e-5) for _ in range(3)])
        self.ffns = nn.CellList([FFN(embed_dim, feedforward_dim, dropout)])

    def construct(self, query, query_pos, memory, memory_mask, reference_points, spatial_shapes, attn_mask=None):
        """``query``/``query_pos`` ``[B, Q, C]``, ``memory`` ``[B, N, C]``, ``memory_mask`` bool ``[B, N]`` (True
        on padding), ``reference_points`` ``[B, Q, L, 4]``, optional self-attention ``attn_mask`` bool ``[Q, Q]``
        (True = blocked) -> updated queries ``[B, Q, C]`` float32."""
        query = self.norms[0](self.attentions[0](query, query, query, query_pos, query_pos, None, attn_mask))
        query = self.attentions[1](query, memory, reference_points, spatial_shapes, key_padding_mask=memory_mask,
                                   query_pos=query_pos)
        query = self.norms[1](query)
        return self.norms[2](self.ffns[0](query))


class FocusDETRDecoder(nn.Cell):
    """Decoder stack with iterative refinement by the (shared) per-layer box heads.

    Args:
        bbox_embed (nn.CellList): the model's box heads (``MLP(C, C, 4, 3)``, at least ``num_layers``); layer ``i``
            refines with ``bbox_embed[i]``. The same Cells are the model's ``bbox_embed`` (the reference shares them
            as ``transformer.decoder.bbox_embed``).
        embed_dim, num_heads, feedforward_dim, num_levels, num_points, dropout: see :class:`FocusDecoderLayer`.
        num_layers: decoder layers.
    """

    def __init__(self, bbox_embed: nn.CellList, embed_dim: int = 256, num_heads: int = 8,
                 feedforward_dim: int = 2048, num_layers: int = 6, num_levels: int = 4, num_points: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.layers = nn.CellList([
            FocusDecoderLayer(embed_dim, num_heads, feedforward_dim, num_levels, num_points, dropout)
            for _ in range(num_layers)
        ])
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm((embed_dim,), epsilon=1e-5)
        self.bbox_embed = bbox_embed

    def construct(self, target, memory, memory_mask, reference_points, valid_ratios,
                  spatial_shapes: Tuple[Tuple[int, int], ...], attn_mask=None):
        """Run the decoder.

        Args:
            target (Tensor[float32]): ``[B, Q, C]`` initial queries.
            memory (Tensor[float32]): ``[B, N, C]`` encoder memory.
            memory_mask (Tensor[bool]): ``[B, N]``, True on padding.
            reference_points (Tensor[float32]): ``[B, Q, 4]`` initial boxes, normalized cxcywh (no gradient).
            valid_ratios (Tensor[float32]): ``[B, L, 2]`` valid fraction ``(w, h)`` of each level.
            spatial_shapes: static ``(H_l, W_l)`` per level.
            attn_mask (Tensor[bool] or None): ``[Q, Q]`` self-attention mask of every layer (denoising groups).

        Returns:
            tuple: ``hidden [layers, B, Q, C]`` (after the final norm) and ``references [layers, B, Q, 4]``, the
            refined boxes of every layer with their gradient (look-forward-twice).
        """
        ratios = ops.concat((valid_ratios, valid_ratios), axis=-1).expand_dims(1)
        output = target
        refs = reference_points
        hidden = []
        references = []
        for i, layer in enumerate(self.layers):
            refs_input = refs.expand_dims(2) * ratios
            query_pos = self.ref_point_head(sine_box_embedding(refs_input[:, :, 0], self.embed_dim // 2))
            output = layer(output, query_pos, memory, memory_mask, refs_input, spatial_shapes, attn_mask)
            new_refs = ops.sigmoid(self.bbox_embed[i](output) + inverse_sigmoid(refs))
            refs = ops.stop_gradient(new_refs)
            hidden.append(self.norm(output))
            references.append(new_refs)
        return ops.stack(hidden), ops.stack(references).astype(mstype.float32)
