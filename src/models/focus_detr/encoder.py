"""Focus-DETR encoder: dual attention over the selected foreground tokens (Zheng et al., ICCV 2023, section 3.3).

Follows detrex ``projects/focus_detr/modeling/focus_detr_transformer.py`` (``FOCUS_DETRTransformerEncoder``) and
``transformer_layer.py`` (``Focus_DETR_BaseTransformerLayer`` with ``operation_order = ("OESM",
"encoder_cross_attn", "norm", "ffn", "norm")``). Per encoder layer ``j``:

1. gather the first ``k_j`` tokens of the cascade ranking (:func:`src.models.focus_detr.fts.select_foreground_tokens`)
   from the current memory, with their positional embeddings, foreground logits and reference points;
2. multi-category score = max over classes of the shared encoder class head (``class_embed[-1]``, "MCSP") times
   the foreground logit; the top ``min(300, k_j)`` tokens do self-attention among themselves ("OESM"), their
   result goes through ``norm2`` and is written back into the gathered set;
3. deformable cross-attention of every gathered token into the ORIGINAL flattened neck features (not the updated
   memory), then norm, FFN, norm;
4. scatter the tokens back into the memory (slots flagged invalid by the selector write back their old value).

Static shapes throughout: ``k_j`` and the OESM size are Python ints; gathers use ``ops.gather_elements`` and the
write-backs ``ops.tensor_scatter_elements`` (indices are unique per image, so the scatter is a plain overwrite).

With ``token_selection=False`` the encoder is the DINO / Deformable-DETR one instead (detrex
``DINOTransformerEncoder``: ``("self_attn", "norm", "ffn", "norm")``): every token of every level, padding
included as in the reference, is a query of deformable self-attention whose value is the current memory; no
foreground ranking, no OESM, no gather or scatter. The same parameters are used (``attentions.1``, ``norms``,
``ffns``); the OESM ones (``attentions.0``, ``norm2``) sit unused, so a Focus-DETR checkpoint loads unchanged.
This is the baseline the paper's encoder cost is compared with (benchmarks/bench_focus_detr.py).

Two options express the MindSpore model zoo's 5-scale Focus-DETR (linxid/Focus-DETR-mindspore
``EncoderDeformableDecoderLayer`` and ``TransformerEncoder``): ``oesm_classes > 0`` gives every layer its own
``linear_class`` (``nn.Dense(C, oesm_classes)``, 90 there) whose max logit alone is the OESM score (no shared head,
no foreground factor), and ``value_from_memory=True`` makes the deformable cross-attention read the running memory
(the output of the previous layers) instead of the original features.

Deviations from the reference, all no-ops at batch size 1 without padding:
- the reference's ``topk(mc_score, 300)`` fails when ``k_j < 300``; here the OESM size is ``min(300, k_j)``;
- slots past an image's own token budget (possible in a padded batch) are ranked last by the OESM and masked as
  attention keys, instead of taking part as in the reference (which then drops their update).
"""

from typing import Sequence, Tuple

from mindspore import nn, ops
from mindspore.common import dtype as mstype

from src.layers.attention import MultiheadAttention
from src.layers.expand import expand_to
from src.layers.ms_deform_attn import MSDeformAttn

OESM_TOPK = 300
# Ranks invalid slots after every real score (finite so that products and softmax stay NaN-free).
_LOW_SCORE = -1e9


class DetrexMHA(nn.Cell):
    """detrex ``MultiheadAttention`` wrapper: positions added to query/key, residual inside.

    Parameter names ``attn.in_proj_weight`` ... match the detrex keys ``attentions.0.attn.*``.

    Args:
        embed_dim: width ``C``.
        num_heads: heads.
        dropout: dropout on the attention weights and on the output before the residual.

    Inputs:
        query, key, value (Tensor[float32]): ``[B, Lq, C]``, ``[B, Lk, C]``, ``[B, Lk, C]``.
        query_pos, key_pos (Tensor[float32]): positions added to query / key.
        key_padding_mask (Tensor[bool] or None): ``[B, Lk]``, True on ignored keys.
        attn_mask (Tensor[bool] or None): ``[Lq, Lk]``, True where query ``i`` may not see key ``j``
            (``attn_masks[0]`` of the detrex decoder layer: the denoising groups).

    Outputs:
        Tensor[float32]: ``[B, Lq, C]`` = ``query + dropout(attn(query + query_pos, key + key_pos, value))``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = MultiheadAttention(embed_dim, num_heads, dropout)
        self.proj_drop = nn.Dropout(p=dropout)

    def construct(self, query, key, value, query_pos, key_pos, key_padding_mask=None, attn_mask=None):
        out = self.attn(query + query_pos, key + key_pos, value, key_padding_mask, attn_mask)
        return query + self.proj_drop(out)


class FFN(nn.Cell):
    """detrex ``FFN`` with two layers: ``x + Dropout(Linear(Dropout(ReLU(Linear(x)))))``.

    Names ``layers.0.0.{weight,bias}`` and ``layers.1.{weight,bias}`` match the detrex keys.

    Args:
        embed_dim: width ``C``.
        feedforward_dim: hidden width.
        dropout: dropout probability.

    Inputs:
        x (Tensor[float32]): ``[..., C]``.

    Outputs:
        Tensor[float32]: ``[..., C]``.
    """

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.SequentialCell([
            nn.SequentialCell([nn.Dense(embed_dim, feedforward_dim), nn.ReLU(), nn.Dropout(p=dropout)]),
            nn.Dense(feedforward_dim, embed_dim),
            nn.Dropout(p=dropout),
        ])

    def construct(self, x):
        return x + self.layers(x)


def gather_tokens(tokens, indices):
    """Gather rows of ``tokens`` ``[B, N, D]`` at ``indices`` int32 ``[B, k]`` -> ``[B, k, D]``."""
    index = expand_to(indices.expand_dims(-1), (indices.shape[0], indices.shape[1], tokens.shape[-1]))
    return ops.gather_elements(tokens, 1, index)


def scatter_tokens(tokens, indices, updates):
    """Overwrite rows of ``tokens`` ``[B, N, D]`` at unique ``indices`` ``[B, k]`` with ``updates`` ``[B, k, D]``."""
    index = expand_to(indices.expand_dims(-1), updates.shape)
    return ops.tensor_scatter_elements(tokens, index, updates, axis=1)


class FocusEncoderLayer(nn.Cell):
    """One Focus-DETR encoder layer on a gathered token set (OESM self-attention + deformable cross-attention).

    Parameter names follow detrex: ``attentions.0.attn.*`` (MHA), ``attentions.1.*`` (MSDeformAttn),
    ``norms.{0,1}`` and ``norm2`` (``nn.LayerNorm``: ``gamma/beta``), ``ffns.0.layers.*``; with ``oesm_classes``
    also ``linear_class.{weight,bias}``.

    Args:
        embed_dim: width ``C``.
        num_heads: heads of both attentions.
        feedforward_dim: FFN hidden width.
        num_levels: feature levels ``L``.
        num_points: deformable sampling points per level.
        dropout: dropout of attentions and FFN.
        oesm_topk: tokens taking part in the OESM self-attention (300); capped by the gathered count.
        oesm_classes: 0 (detrex) or the width of this layer's own OESM class head (the MindSpore zoo's 90).
    """

    def __init__(self, embed_dim: int, num_heads: int, feedforward_dim: int, num_levels: int, num_points: int = 4,
                 dropout: float = 0.0, oesm_topk: int = OESM_TOPK, oesm_classes: int = 0):
        super().__init__()
        self.oesm_topk = oesm_topk
        if oesm_classes:
            self.linear_class = nn.Dense(embed_dim, oesm_classes)
        self.attentions = nn.CellList([
            DetrexMHA(embed_dim, num_heads, dropout),
            MSDeformAttn(embed_dim, num_heads, num_levels, num_points, dropout),
        ])
        self.norms = nn.CellList([nn.LayerNorm((embed_dim,), epsilon=1e-5) for _ in range(2)])
        self.norm2 = nn.LayerNorm((embed_dim,), epsilon=1e-5)
        self.ffns = nn.CellList([FFN(embed_dim, feedforward_dim, dropout)])

    def construct(self, query, query_pos, oesm_score, slot_valid, value, value_mask, reference_points,
                  spatial_shapes: Tuple[Tuple[int, int], ...]):
        """Update the gathered tokens.

        Args:
            query (Tensor[float32]): ``[B, k, C]`` gathered tokens.
            query_pos (Tensor[float32]): ``[B, k, C]`` their positional + level embeddings.
            oesm_score (Tensor[float32]): ``[B, k]`` the score ranking them for the OESM self-attention.
            slot_valid (Tensor[bool]): ``[B, k]``, True where the slot is really selected for that image.
            value (Tensor[float32]): ``[B, N, C]`` deformable value (neck features, or the running memory).
            value_mask (Tensor[bool]): ``[B, N]``, True on padding.
            reference_points (Tensor[float32]): ``[B, k, L, 2]`` normalized per-level reference points.
            spatial_shapes: static ``(H_l, W_l)`` per level.

        Returns:
            Tensor[float32]: ``[B, k, C]`` updated tokens.
        """
        num_slots = query.shape[1]
        oesm_k = min(self.oesm_topk, num_slots)
        mc_score = ops.select(slot_valid, oesm_score, ops.full_like(oesm_score, _LOW_SCORE))
        _, chosen = ops.topk(mc_score, oesm_k, dim=1, largest=True, sorted=True)
        chosen = chosen.astype(mstype.int32)
        chosen_tgt = gather_tokens(query, chosen)
        chosen_pos = gather_tokens(query_pos, chosen)
        chosen_valid = ops.gather_elements(slot_valid.astype(mstype.int32), 1, chosen) > 0
        attended = self.attentions[0](chosen_tgt, chosen_tgt, chosen_tgt, chosen_pos, chosen_pos,
                                      ops.logical_not(chosen_valid))
        query = scatter_tokens(query, chosen, self.norm2(attended))

        query = self.attentions[1](query, value, reference_points, spatial_shapes, key_padding_mask=value_mask,
                                   query_pos=query_pos)
        query = self.norms[0](query)
        query = self.ffns[0](query)
        return self.norms[1](query)

    def dense_self_attention(self, memory, memory_pos, memory_mask, reference_points,
                             spatial_shapes: Tuple[Tuple[int, int], ...]):
        """DINO encoder layer on all tokens: deformable self-attention (value = ``memory``), norm, FFN, norm.

        Args:
            memory (Tensor[float32]): ``[B, N, C]`` current memory, every token.
            memory_pos (Tensor[float32]): ``[B, N, C]`` positional + level embeddings.
            memory_mask (Tensor[bool]): ``[B, N]``, True on padding (masked as values).
            reference_points (Tensor[float32]): ``[B, N, L, 2]`` normalized per-level reference points.
            spatial_shapes: static ``(H_l, W_l)`` per level.

        Returns:
            Tensor[float32]: ``[B, N, C]`` updated memory.
        """
        memory = self.attentions[1](memory, memory, reference_points, spatial_shapes, key_padding_mask=memory_mask,
                                    query_pos=memory_pos)
        memory = self.norms[0](memory)
        memory = self.ffns[0](memory)
        return self.norms[1](memory)


class FocusDETREncoder(nn.Cell):
    """Stack of :class:`FocusEncoderLayer` working on the cascade-selected tokens.

    Args:
        mcsp_head: the shared encoder class head (``class_embed[-1]``, ``nn.Dense(C, K)``); the same Cell is used
            by every layer, as the reference's ``enhance_MCSP`` list holds one object six times.
        embed_dim, num_heads, feedforward_dim, num_levels, num_points, dropout, oesm_topk: see
            :class:`FocusEncoderLayer`.
        num_layers: encoder layers (at most ``len(cascade)`` of the selector, 6).
        token_selection: True = Focus-DETR (cascade-selected tokens, OESM); False = the DINO-equivalent encoder
            (every token through deformable self-attention in every layer, see the module docstring); then
            ``foreground``, ``indices`` and ``layer_valid`` are ignored.
        oesm_classes: 0 = OESM score ``max(mcsp_head(token)) * foreground`` (detrex); ``> 0`` = each layer's own
            ``linear_class`` of that width, max logit alone (the MindSpore zoo's 5-scale model).
        value_from_memory: False = deformable value is the original features (detrex); True = the running memory
            (the MindSpore zoo's model).
    """

    def __init__(self, mcsp_head: nn.Cell, embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 2048,
                 num_layers: int = 6, num_levels: int = 4, num_points: int = 4, dropout: float = 0.0,
                 oesm_topk: int = OESM_TOPK, token_selection: bool = True, oesm_classes: int = 0,
                 value_from_memory: bool = False):
        super().__init__()
        self.num_layers = num_layers
        self.token_selection = token_selection
        self.layer_heads = oesm_classes > 0
        self.value_from_memory = value_from_memory
        self.layers = nn.CellList([
            FocusEncoderLayer(embed_dim, num_heads, feedforward_dim, num_levels, num_points, dropout, oesm_topk,
                              oesm_classes)
            for _ in range(num_layers)
        ])
        self.enhance_mcsp = mcsp_head

    def construct(self, feat_flatten, pos_flatten, mask_flatten, reference_points, foreground, indices,
                  layer_valid: Sequence, spatial_shapes: Tuple[Tuple[int, int], ...]):
        """Run the encoder.

        Args:
            feat_flatten (Tensor[float32]): ``[B, N, C]`` flattened neck features (no position), also the
                deformable value of every layer unless ``value_from_memory``.
            pos_flatten (Tensor[float32]): ``[B, N, C]`` sine position + level embedding.
            mask_flatten (Tensor[bool]): ``[B, N]``, True on padding.
            reference_points (Tensor[float32]): ``[B, N, L, 2]`` encoder reference points (valid-ratio scaled).
            foreground (Tensor[float32]): ``[B, N]`` foreground logits from the selector.
            indices (Tensor[int32]): ``[B, k_0]`` tokens sorted by foreground score.
            layer_valid (tuple[Tensor[bool]]): per layer ``[B, k_j]`` slot validity; ``k_j`` is read from it.
            spatial_shapes: static ``(H_l, W_l)`` per level.

        Returns:
            Tensor[float32]: ``[B, N, C]`` memory; with token selection, tokens never selected keep their neck
            features.
        """
        if not self.token_selection:
            output = feat_flatten
            for layer in self.layers:
                output = layer.dense_self_attention(output, pos_flatten, mask_flatten, reference_points,
                                                    spatial_shapes)
            return output
        batch, num_tokens, num_levels, _ = reference_points.shape
        refs_flat = reference_points.reshape(batch, num_tokens, num_levels * 2)
        output = feat_flatten
        for j, layer in enumerate(self.layers):
            valid = layer_valid[j]
            idx = indices[:, :valid.shape[1]]
            query = gather_tokens(output, idx)
            query_pos = gather_tokens(pos_flatten, idx)
            fg = ops.gather_elements(foreground, 1, idx)
            refs = gather_tokens(refs_flat, idx).reshape(batch, -1, num_levels, 2)
            if self.layer_heads:
                oesm_score = layer.linear_class(query).max(axis=-1)
            else:
                oesm_score = self.enhance_mcsp(query).max(axis=-1) * fg
            value = output if self.value_from_memory else feat_flatten
            updated = layer(query, query_pos, oesm_score, valid, value, mask_flatten, refs, spatial_shapes)
            updated = ops.select(expand_to(valid.expand_dims(-1), updated.shape), updated, query)
            output = scatter_tokens(output, idx, updated)
        return output
