"""MindSpore CPU kernels on one attention-score tensor: the alternatives behind ``src/layers/attention.py`` and
``src/layers/expand.py``.

On a ``[2, 8, 850, 850]`` float32 tensor (DETR-R50's encoder self-attention scores at 800x1066, batch 2), graph
mode, the median milliseconds of ``--iters`` calls after one compiling call, for each way of doing the same thing:

* row sum over the last axis: ``ReduceSum`` vs a matrix product with a ones vector;
* expanding a ``[2, 8, 850, 1]`` row statistic, or a ``[2, 1, 1, 850]`` key-padding bias, to the full shape:
  ``BroadcastTo`` vs ``Tile``;
* ``Transpose`` of the last two axes (what ``ops.matmul``'s gradient launches; ``BatchMatMul`` with transpose flags
  does not), beside a same-shape ``Mul`` for scale;
* six chained softmaxes, forward and backward: the built-in gradient vs
  :class:`src.layers.attention.SoftmaxLastAxis`, with the process's peak RSS (each in its own process).

Run from the repository root::

    python -m benchmarks.bench_attention_kernels [--iters 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result

SHAPE = (2, 8, 850, 850)
KERNELS = ("row_sum_reduce", "row_sum_matmul", "row_expand_broadcast_to", "row_expand_tile",
           "bias_expand_broadcast_to", "bias_expand_tile", "transpose", "mul")
SOFTMAX_CHAINS = ("softmax_builtin_grad", "softmax_last_axis_cell")


def _median_ms(fn, args, iters: int) -> float:
    fn(*args).asnumpy()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(*args).asnumpy()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def run_kernels(iters: int) -> dict:
    """Median ms of every kernel alternative of :data:`KERNELS`."""
    import mindspore as ms
    from mindspore import nn, ops

    from src.runtime import init_context

    init_context("CPU")
    b, h, length = SHAPE[0], SHAPE[1], SHAPE[-1]
    rng = np.random.default_rng(0)
    scores = ms.Tensor(rng.random(SHAPE, dtype=np.float32))
    row = ms.Tensor(rng.random((b, h, length, 1), dtype=np.float32))
    bias = ms.Tensor(rng.random((b, 1, 1, length), dtype=np.float32))
    ones = ms.Tensor(np.ones((length, 1), np.float32))

    class Kernel(nn.Cell):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def construct(self, x, row, bias, ones):
            if self.name == "row_sum_reduce":
                return x.sum(axis=-1, keepdims=True)
            if self.name == "row_sum_matmul":
                return ops.matmul(x.reshape(-1, x.shape[-1]), ones).reshape(row.shape)
            if self.name == "row_expand_broadcast_to":
                return ops.broadcast_to(row, x.shape)
            if self.name == "row_expand_tile":
                return ops.tile(row, (1, 1, 1, x.shape[-1]))
            if self.name == "bias_expand_broadcast_to":
                return ops.broadcast_to(bias, x.shape)
            if self.name == "bias_expand_tile":
                return ops.tile(bias, (1, x.shape[1], x.shape[2], 1))
            if self.name == "transpose":
                return x.transpose(0, 1, 3, 2)
            return x * x

    return {name: _median_ms(Kernel(name), (scores, row, bias, ones), iters) for name in KERNELS}


def run_softmax_chain(name: str, iters: int) -> dict:
    """Six chained softmaxes with gradients: median ms per forward + backward and the peak RSS (MiB)."""
    import mindspore as ms
    from mindspore import nn, ops

    from src.layers.attention import SoftmaxLastAxis
    from src.runtime import init_context

    init_context("CPU")

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.softmax = SoftmaxLastAxis() if name == "softmax_last_axis_cell" else None

        def construct(self, x):
            for _ in range(6):
                x = (ops.softmax(x, axis=-1) if self.softmax is None else self.softmax(x)) * 1.0001
            return x.sum()

    scores = ms.Tensor(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))
    grad_fn = ms.grad(Chain())
    return {"ms": _median_ms(grad_fn, (scores,), iters), "peak_rss_mb": peak_mb()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--worker", choices=("kernels",) + SOFTMAX_CHAINS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "kernels":
        print_result(run_kernels(args.iters))
        return
    if args.worker:
        print_result(run_softmax_chain(args.worker, args.iters))
        return
    print(f"MindSpore CPU kernels on a {list(SHAPE)} float32 tensor, graph mode, median ms of {args.iters} calls")
    for name, ms_ in measure_in_subprocess("benchmarks.bench_attention_kernels", "kernels",
                                           ["--iters", args.iters]).items():
        print(f"{name:28s} {ms_:8.1f}")
    for name in SOFTMAX_CHAINS:
        result = measure_in_subprocess("benchmarks.bench_attention_kernels", name, ["--iters", args.iters])
        print(f"{name:28s} {result['ms']:8.1f}   (6 softmaxes, forward + backward; "
              f"peak RSS {result['peak_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
