"""Multi-head attention with torch-compatible parameters, batch-first.

Follows ``torch.nn.MultiheadAttention`` (as used by facebookresearch/detr ``models/transformer.py``): a packed
input projection ``in_proj_weight`` ``[3E, E]`` / ``in_proj_bias`` ``[3E]`` whose rows are (q, k, v), an
output projection ``out_proj`` (``nn.Dense``, weight ``[E, E]``), scaled dot-product attention per head, an
optional ``key_padding_mask`` and dropout on the attention weights. Unlike torch's default, tensors are
**batch-first** (``[B, L, E]``), which avoids transposes around every layer in the DETR transformer.
"""

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import XavierUniform, initializer

from src.layers.channel_first import dense_into_channel_first, dense_out_of_channel_first
from src.layers.expand import expand_to

# Finite stand-in for -inf on masked keys: exp() underflows to exactly 0, and a fully masked row gives a
# uniform distribution instead of NaN.
_MASK_VALUE = -1e9


class SoftmaxLastAxis(nn.Cell):
    """Softmax over the last axis (MindSpore's built-in kernel) with a faster, memory-lean gradient.

    The backward is written out, ``dx = y * (dy - sum(dy * y))``. MindSpore 2.10's default Softmax gradient
    subtracts the ``[..., 1]`` row sum with a broadcasting ``Sub``, whose CPU kernel keeps 16 bytes per score for
    the life of a compiled training graph (benchmarks/README.md, "Who holds it"). Here the row sum is a matrix
    product with a ones vector and is expanded back with ``Tile``: on one ``[2, 8, 850, 850]`` score tensor
    (DETR-R50's encoder at 800x1066, batch 2) the CPU ``ReduceSum`` over the last axis takes 49 ms against 10 ms
    for the product, and ``BroadcastTo`` 46 ms against 5 ms for ``Tile``. Six chained softmaxes of that size,
    forward and backward: 222 ms and 915 MB peak RSS, against 526 ms and 1967 MB with the default gradient
    (``benchmarks/bench_attention_kernels.py``). Values and gradients equal ``torch.softmax``'s to float32 rounding
    (``tests/test_softmax_last_axis.py``).

    Inputs:
        scores (Tensor[float32]): ``[..., L]``; masked entries carry a large negative bias (a fully masked row
            gives uniform weights).

    Outputs:
        Tensor[float32]: same shape, rows summing to 1.
    """

    def construct(self, scores):
        return ops.softmax(scores, axis=-1)

    def bprop(self, scores, out, dout):
        length = out.shape[-1]
        row_sum = ops.matmul((dout * out).reshape(-1, length), ops.ones((length, 1), out.dtype))
        return (out * (dout - expand_to(row_sum.reshape(out.shape[:-1] + (1,)), out.shape)),)


def _additive(mask):
    """float32 bias of ``mask``'s shape: ``_MASK_VALUE`` where True, 0 elsewhere. A masked score becomes
    ``s - 1e9``, whose softmax weight underflows to exactly 0 beside any unmasked key; in a fully masked row it
    rounds to -1e9 (float32 spacing there is 64) for ``|s| < 32``, giving the same uniform row as a fill."""
    return mask.astype(ms.float32) * _MASK_VALUE


class MultiheadAttention(nn.Cell):
    """Scaled dot-product multi-head attention.

    Args:
        embed_dim: Model width ``E``.
        num_heads: Number of heads ``h``; ``E`` must be divisible by it.
        dropout: Dropout probability on the attention weights (active only in training mode).

    Inputs:
        query (Tensor[float32]): ``[B, Lq, E]``.
        key (Tensor[float32]): ``[B, Lk, E]``.
        value (Tensor[float32]): ``[B, Lk, E]``.
        key_padding_mask (Tensor[bool] or None): ``[B, Lk]``, True for keys to ignore (padding).
        attn_mask (Tensor[bool] or None): ``[Lq, Lk]`` (shared by the batch) or ``[B, Lq, Lk]``, True where query
            ``i`` may not attend to key ``j`` (torch's boolean ``attn_mask``; e.g. DINO's denoising groups).

    Outputs:
        Tensor[float32]: ``[B, Lq, E]``. :meth:`attend` also returns the attention weights.

    Raises:
        ValueError: If ``embed_dim`` is not divisible by ``num_heads``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = 1.0 / math.sqrt(self.head_dim)
        # torch initializes the packed projection with xavier_uniform and every bias with zeros.
        self.in_proj_weight = Parameter(
            initializer(XavierUniform(), (3 * embed_dim, embed_dim), ms.float32), name="in_proj_weight"
        )
        self.in_proj_bias = Parameter(Tensor(np.zeros(3 * embed_dim, np.float32)), name="in_proj_bias")
        self.out_proj = nn.Dense(embed_dim, embed_dim, bias_init="zeros")
        self.softmax = SoftmaxLastAxis()
        # Heads are laid out channel-first, [B, h, d, L], so that no Transpose kernel runs
        # (src/layers/channel_first.py); the flags below read the operands transposed.
        self.matmul_qk = ops.BatchMatMul(transpose_a=True)  # [B, h, d, Lq] x [B, h, d, Lk] -> [B, h, Lq, Lk]
        self.matmul_va = ops.BatchMatMul(transpose_b=True)  # [B, h, d, Lk] x [B, h, Lq, Lk] -> [B, h, d, Lq]
        self.attn_drop = nn.Dropout(p=dropout)

    def _project_heads(self, x, index):
        """Row block ``index`` of the packed projection (0 -> q, 1 -> k, 2 -> v) of ``x`` ``[B, L, E]``, as
        ``[B, h, d, L]``."""
        b, length, _ = x.shape
        start, end = index * self.embed_dim, (index + 1) * self.embed_dim
        projected = dense_into_channel_first(x, self.in_proj_weight[start:end], self.in_proj_bias[start:end])
        return projected.reshape(b, self.num_heads, self.head_dim, length)

    def construct(self, query, key, value, key_padding_mask=None, attn_mask=None):
        return self.attend(query, key, value, key_padding_mask, attn_mask)[0]

    def attend(self, query, key, value, key_padding_mask=None, attn_mask=None):
        """As ``construct``, returning ``(output [B, Lq, E], weights [B, h, Lq, Lk])``: the softmax weights per
        head before dropout (transformers' ``output_attentions``); in graph mode an unused second output costs
        nothing."""
        b, lq, _ = query.shape
        q = self._project_heads(query, 0) * self.scaling
        k = self._project_heads(key, 1)
        v = self._project_heads(value, 2)
        scores = self.matmul_qk(q, k)  # [B, h, Lq, Lk]
        # Masks are added as a bias, as transformers' DETR does: MindSpore 2.10's CPU masked_fill with a
        # broadcast mask costs about 7x an add over the [B, h, Lq, Lk] scores and keeps scores-sized buffers.
        # The bias is expanded to the scores' shape before the add: a broadcasting add in a compiled training
        # graph kept about 2 GB more at DETR-R50's 800x1066 batch-2 step (benchmarks/README.md).
        if key_padding_mask is not None:
            scores = scores + expand_to(_additive(key_padding_mask)[:, None, None, :], scores.shape)
        if attn_mask is not None:
            # [Lq, Lk] broadcasts over batch and heads; [B, Lq, Lk] gets a head axis.
            bias = _additive(attn_mask)
            scores = scores + expand_to(bias if attn_mask.ndim == 2 else bias[:, None], scores.shape)
        weights = self.softmax(scores)
        out = self.matmul_va(v, self.attn_drop(weights)).reshape(b, self.embed_dim, lq)  # [B, E, Lq]
        return dense_out_of_channel_first(out, self.out_proj.weight, self.out_proj.bias), weights
