"""Linear layers into and out of the channel-first token layout ``[B, C, L]``, without a Transpose kernel.

Attention splits its projections into heads, ``[B, L, h * d] -> [B, h, d, L]``. Written as a reshape and a
transpose, every call runs a ``Transpose`` kernel, and MindSpore 2.10's CPU ``Transpose`` keeps an 8-byte index per
element for the life of a compiled graph (twice that in training, where its gradient is another transpose):
564 MB of Focus-DETR's 384x640 training graph, about 90 MB of DETR-R50's 800x1066 inference graph
(benchmarks/README.md, "Transposes"). A linear layer can produce the channel-first layout directly, as
``W @ x^T``, with the transposition folded into ``BatchMatMul``'s flags; the head split is then a reshape. The
weight is tiled over the batch (``[C_out, C_in]`` is small beside the tokens), and the bias is added by
``BiasAdd`` over axis 1 or the last axis, never by a broadcasting add.
"""

from mindspore import ops

from src.layers.expand import expand_to

_MATMUL_INTO = ops.BatchMatMul(transpose_b=True)  # [B, Cout, Cin] x [B, L, Cin]^T -> [B, Cout, L]
_MATMUL_OUT_OF = ops.BatchMatMul(transpose_a=True, transpose_b=True)  # [B, Cin, L]^T x [B, Cout, Cin]^T -> [B, L, Cout]


def dense_into_channel_first(x, weight, bias):
    """``(x @ weight^T + bias)`` transposed: the tokens of ``x`` projected and laid out channel-first.

    Args:
        x (Tensor[float32]): ``[B, L, C_in]`` tokens.
        weight (Tensor[float32]): ``[C_out, C_in]`` (``nn.Dense`` / ``torch.nn.Linear`` layout).
        bias (Tensor[float32]): ``[C_out]``.

    Returns:
        Tensor[float32]: ``[B, C_out, L]``.
    """
    batch = x.shape[0]
    out = _MATMUL_INTO(expand_to(weight[None], (batch,) + weight.shape), x)
    return ops.bias_add(out, bias)


def dense_out_of_channel_first(x, weight, bias):
    """The channel-first tokens ``x`` projected back to the token-major layout, ``x^T @ weight^T + bias``.

    Args:
        x (Tensor[float32]): ``[B, C_in, L]``.
        weight (Tensor[float32]): ``[C_out, C_in]``.
        bias (Tensor[float32]): ``[C_out]``.

    Returns:
        Tensor[float32]: ``[B, L, C_out]``.
    """
    batch, _, length = x.shape
    out = _MATMUL_OUT_OF(x, expand_to(weight[None], (batch,) + weight.shape))
    return ops.bias_add(out.reshape(batch * length, -1), bias).reshape(batch, length, -1)
