"""DETR encoder-decoder transformer (post-norm), batch-first.

Follows facebookresearch/detr ``models/transformer.py`` with ``normalize_before=False`` and
``return_intermediate_dec=True``. Differences from ``torch.nn.Transformer`` kept from DETR:

* positional encodings are added to queries and keys in every attention, never to values;
* the encoder has no final norm; the decoder's shared ``norm`` is applied to the output of *every* layer, and
  these normed outputs are what is returned (the un-normed output feeds the next layer);
* the decoder starts from zeros and the learned ``query_embed`` acts as the query position encoding.

Tensors are batch-first (``[B, L, C]``) rather than DETR's sequence-first layout; parameter names and shapes
are unchanged, so torch weights load without transposes.
"""

from mindspore import nn, ops
from mindspore.common.initializer import XavierUniform, initializer

from src.layers.attention import MultiheadAttention


class TransformerEncoderLayer(nn.Cell):
    """Post-norm encoder layer: self-attention (q = k = src + pos) then FFN, each followed by LayerNorm.

    Inputs:
        src (Tensor[float32]): ``[B, S, C]``.
        key_padding_mask (Tensor[bool]): ``[B, S]``, True on padding.
        pos (Tensor[float32]): ``[B, S, C]``.

    Outputs:
        Tuple of the output (Tensor[float32] ``[B, S, C]``) and the self-attention weights (``[B, h, S, S]``).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Dense(d_model, dim_feedforward)
        self.linear2 = nn.Dense(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm((d_model,), epsilon=1e-5)
        self.norm2 = nn.LayerNorm((d_model,), epsilon=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.dropout1 = nn.Dropout(p=dropout)
        self.dropout2 = nn.Dropout(p=dropout)

    def construct(self, src, key_padding_mask, pos):
        q = src + pos
        attended, weights = self.self_attn.attend(q, q, src, key_padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout(ops.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn)), weights


class TransformerDecoderLayer(nn.Cell):
    """Post-norm decoder layer: self-attention, cross-attention to the memory, FFN; LayerNorm after each.

    Inputs:
        tgt (Tensor[float32]): ``[B, Q, C]``.
        memory (Tensor[float32]): ``[B, S, C]``.
        memory_key_padding_mask (Tensor[bool]): ``[B, S]``, True on padding.
        pos (Tensor[float32]): ``[B, S, C]`` memory positional encoding (added to the cross-attention keys).
        query_pos (Tensor[float32]): ``[B, Q, C]`` query embedding (added to self-attn q/k, cross-attn q).

    Outputs:
        Tuple of the output (Tensor[float32] ``[B, Q, C]``) and the cross-attention weights (``[B, h, Q, S]``).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Dense(d_model, dim_feedforward)
        self.linear2 = nn.Dense(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm((d_model,), epsilon=1e-5)
        self.norm2 = nn.LayerNorm((d_model,), epsilon=1e-5)
        self.norm3 = nn.LayerNorm((d_model,), epsilon=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.dropout1 = nn.Dropout(p=dropout)
        self.dropout2 = nn.Dropout(p=dropout)
        self.dropout3 = nn.Dropout(p=dropout)

    def construct(self, tgt, memory, memory_key_padding_mask, pos, query_pos):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt)))
        cross, weights = self.multihead_attn.attend(tgt + query_pos, memory + pos, memory, memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(cross))
        ffn = self.linear2(self.dropout(ops.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn)), weights


class TransformerEncoder(nn.Cell):
    """Stack of encoder layers (no final norm in the post-norm setting).

    Outputs:
        Tuple of the output ``[B, S, C]`` and the last layer's self-attention weights ``[B, h, S, S]``.
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.CellList(
            [TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)]
        )

    def construct(self, src, key_padding_mask, pos):
        weights = None
        for layer in self.layers:
            src, weights = layer(src, key_padding_mask, pos)
        return src, weights


class TransformerDecoder(nn.Cell):
    """Stack of decoder layers returning the shared-norm output of every layer.

    Outputs:
        Tuple of Tensor[float32] ``[L, B, Q, C]`` (index ``-1`` is the final layer) and the last layer's
        cross-attention weights ``[B, h, Q, S]``.
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.CellList(
            [TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm((d_model,), epsilon=1e-5)

    def construct(self, tgt, memory, memory_key_padding_mask, pos, query_pos):
        intermediate = []
        weights = None
        for layer in self.layers:
            tgt, weights = layer(tgt, memory, memory_key_padding_mask, pos, query_pos)
            intermediate.append(self.norm(tgt))
        return ops.stack(intermediate), weights


class Transformer(nn.Cell):
    """DETR transformer.

    Args:
        d_model: Width ``C`` (DETR: 256).
        nhead: Attention heads (8).
        num_encoder_layers: Encoder depth (6).
        num_decoder_layers: Decoder depth ``L`` (6).
        dim_feedforward: FFN width (2048).
        dropout: Dropout in attention weights, residual branches and FFN (0.1).

    Inputs:
        src (Tensor[float32]): ``[B, C, H, W]`` projected backbone feature.
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.
        query_embed (Tensor[float32]): ``[Q, C]`` learned object queries.
        pos (Tensor[float32]): ``[B, C, H, W]`` positional encoding of ``src``.

    Outputs:
        Tuple of ``hs`` (Tensor[float32] ``[L, B, Q, C]``, decoder outputs after the shared norm) and
        ``memory`` (Tensor[float32] ``[B, C, H, W]``, encoder output). :meth:`forward_with_attention` adds the
        attention weights.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = TransformerEncoder(num_encoder_layers, d_model, nhead, dim_feedforward, dropout)
        self.decoder = TransformerDecoder(num_decoder_layers, d_model, nhead, dim_feedforward, dropout)
        # DETR re-initializes every matrix of the transformer with xavier_uniform (biases keep their init).
        for param in self.get_parameters():
            if param.ndim > 1:
                param.set_data(initializer(XavierUniform(), param.shape, param.dtype))

    def construct(self, src, mask, query_embed, pos):
        hs, memory, _, _ = self.forward_with_attention(src, mask, query_embed, pos)
        return hs, memory

    def forward_with_attention(self, src, mask, query_embed, pos):
        """``construct``'s outputs followed by the last encoder layer's self-attention weights ``[B, h, HW, HW]``
        and the last decoder layer's cross-attention weights ``[B, h, Q, HW]`` (keys in row-major ``H x W``
        order; per head, before dropout)."""
        b, c, h, w = src.shape
        src = src.reshape(b, c, h * w).transpose(0, 2, 1)  # [B, HW, C]
        pos = pos.reshape(b, c, h * w).transpose(0, 2, 1)  # [B, HW, C]
        key_padding_mask = mask.reshape(b, h * w)
        query_pos = ops.broadcast_to(query_embed[None], (b, query_embed.shape[0], c))  # [B, Q, C]
        tgt = ops.zeros_like(query_pos)
        memory, encoder_weights = self.encoder(src, key_padding_mask, pos)
        hs, decoder_weights = self.decoder(tgt, memory, key_padding_mask, pos, query_pos)
        return hs, memory.transpose(0, 2, 1).reshape(b, c, h, w), encoder_weights, decoder_weights
