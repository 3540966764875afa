"""``src.layers.expand.expand_to`` gives ``np.broadcast_to``'s values and, as a broadcast, a gradient summed over the
repeats, in graph mode, for the operand ranks the models use (a lower-rank operand is left-padded with 1s)."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.layers.expand import expand_to


class _Weighted(nn.Cell):
    def __init__(self, shape, upstream):
        super().__init__()
        self.shape = shape
        self.upstream = ms.Tensor(upstream)

    def construct(self, x):
        return (expand_to(x, self.shape) * self.upstream).sum()


@pytest.mark.parametrize("small, shape", [((2, 1, 1, 5), (2, 3, 4, 5)), ((4, 1, 1, 1), (4, 3, 2, 2)),
                                          ((5,), (2, 3, 5)), ((2, 3, 1), (2, 3, 6))])
def test_expand_to_equals_broadcast_values_and_gradient(small, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=small).astype(np.float32)
    upstream = rng.normal(size=shape).astype(np.float32)
    out = expand_to(ms.Tensor(x), shape).asnumpy()
    np.testing.assert_array_equal(out, np.broadcast_to(x, shape))
    grad = ms.grad(_Weighted(shape, upstream))(ms.Tensor(x)).asnumpy()
    padded = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
    axes = tuple(i for i, (p, s) in enumerate(zip(padded.shape, shape)) if p == 1 and s > 1)
    expected = upstream.sum(axis=axes, keepdims=True).reshape(small)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
