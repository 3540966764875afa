"""Expanding a tensor to a larger shape by repetition, the fast way on MindSpore's CPU backend."""

from mindspore import ops


def expand_to(x, shape):
    """``x`` repeated along its size-1 axes to ``shape``: the values of ``ops.broadcast_to(x, shape)``, with ``Tile``.

    Operands of element-wise ops are expanded to the full shape first because MindSpore 2.10's CPU ``Add`` /
    ``Sub`` / ``Mul`` keep two index tables of the output's size (16 bytes per element) for the life of a compiled
    graph when their operands' shapes differ (benchmarks/README.md, "Who holds it"). ``Tile`` does the expansion
    about 10x faster than ``BroadcastTo`` on CPU: [2, 8, 850, 1] -> [2, 8, 850, 850] in 5 ms against 46 ms
    (``benchmarks/bench_attention_kernels.py``). The gradient with respect to ``x`` sums over the repeats, as for
    ``broadcast_to``. Shapes unknown at compile time (dynamic-shape inference graphs) fall back to ``broadcast_to``,
    since ``Tile`` needs static repeat counts.

    Args:
        x (Tensor): rank at most ``len(shape)``; after left-padding its shape with 1s, each axis is 1 or equal
            to ``shape``'s.
        shape (tuple[int]): the target shape (static).

    Returns:
        Tensor of ``shape`` and ``x``'s dtype.
    """
    if ops.is_sequence_value_unknown(shape) or ops.is_sequence_value_unknown(x.shape):
        return ops.broadcast_to(x, shape)
    x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
    return ops.tile(x, tuple([full // size for full, size in zip(shape, x.shape)]))
