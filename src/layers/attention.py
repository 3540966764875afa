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

# Finite stand-in for -inf on masked keys: exp() underflows to exactly 0, and a fully masked row gives a
# uniform distribution instead of NaN.
_MASK_VALUE = -1e9


def softmax_last_axis(scores):
    """Softmax over the last axis of ``scores`` (float32, any shape), as ``ops.softmax(scores, -1)`` to rounding.

    Written as ``exp(s - max) * (1 / sum)`` with the row statistics expanded to the full shape: in a compiled
    MindSpore 2.10 CPU training graph the built-in Softmax keeps about 4.5 times its tensor per node for the life
    of the graph (176 MB on a ``[1, 8, 1100, 1100]`` score tensor) and a division about 12 times, where this form
    keeps about 2; the Focus-DETR R50 step at 384x640 peaks 667 MB lower with it (benchmarks/README.md,
    "Focus-DETR R50 training memory"). The shift by the row maximum carries no gradient (softmax does not
    depend on it). Agrees with ``ops.softmax`` / ``torch.softmax`` to float32 rounding (relative 1e-5).

    Args:
        scores (Tensor[float32]): any shape; masked entries carry a large negative bias (a fully masked row gives
            uniform weights, as the built-in softmax).

    Returns:
        Tensor[float32]: same shape, rows summing to 1.
    """
    shifted = scores - ops.broadcast_to(ops.stop_gradient(scores.max(axis=-1, keepdims=True)), scores.shape)
    exp = ops.exp(shifted)
    return exp * ops.broadcast_to(1.0 / exp.sum(axis=-1, keepdims=True), scores.shape)


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
        self.attn_drop = nn.Dropout(p=dropout)

    def _project(self, x, index):
        # Row block ``index`` of the packed projection: 0 -> q, 1 -> k, 2 -> v.
        start = index * self.embed_dim
        weight = self.in_proj_weight[start:start + self.embed_dim]
        bias = self.in_proj_bias[start:start + self.embed_dim]
        # ops.dense adds the bias with BiasAdd: a broadcasting ``+ bias`` keeps 16 bytes per output element in a
        # compiled CPU training graph (benchmarks/README.md, "Who holds it").
        return ops.dense(x, weight, bias)

    def _split_heads(self, x):
        # [B, L, E] -> [B, h, L, d]
        b, length, _ = x.shape
        return x.reshape(b, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, query, key, value, key_padding_mask=None, attn_mask=None):
        return self.attend(query, key, value, key_padding_mask, attn_mask)[0]

    def attend(self, query, key, value, key_padding_mask=None, attn_mask=None):
        """As ``construct``, returning ``(output [B, Lq, E], weights [B, h, Lq, Lk])``: the softmax weights per
        head before dropout (transformers' ``output_attentions``); in graph mode an unused second output costs
        nothing."""
        b, lq, _ = query.shape
        q = self._split_heads(self._project(query, 0) * self.scaling)
        k = self._split_heads(self._project(key, 1))
        v = self._split_heads(self._project(value, 2))
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2))  # [B, h, Lq, Lk]
        # Masks are added as a bias, as transformers' DETR does: MindSpore 2.10's CPU masked_fill with a
        # broadcast mask costs about 7x an add over the [B, h, Lq, Lk] scores and keeps scores-sized buffers.
        # The bias is expanded to the scores' shape before the add: a broadcasting add in a compiled training
        # graph kept about 2 GB more at DETR-R50's 800x1066 batch-2 step (benchmarks/README.md).
        if key_padding_mask is not None:
            scores = scores + ops.broadcast_to(_additive(key_padding_mask)[:, None, None, :], scores.shape)
        if attn_mask is not None:
            # [Lq, Lk] broadcasts over batch and heads; [B, Lq, Lk] gets a head axis.
            bias = _additive(attn_mask)
            scores = scores + ops.broadcast_to(bias if attn_mask.ndim == 2 else bias[:, None], scores.shape)
        # Training graphs take the memory-lean softmax (DETR-R50's 800x1066 step: 7.8 GB peak against 8.2 GB with
        # ops.softmax, same time); inference keeps the built-in kernel, faster there (softmax_last_axis's
        # BroadcastTo and ReduceSum made DETR-R50's 800x1066 inference 2.11 s per image against 1.53 s).
        weights = softmax_last_axis(scores) if self.training else ops.softmax(scores, axis=-1)
        out = ops.matmul(self.attn_drop(weights), v).transpose(0, 2, 1, 3).reshape(b, lq, self.embed_dim)
        return self.out_proj(out), weights
