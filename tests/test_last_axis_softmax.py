"""src.layers.softmax.LastAxisSoftmax: output and hand-written gradient against torch's softmax and autograd, in a
compiled (graph-mode) gradient, where its bprop replaces MindSpore's."""

import mindspore as ms
import numpy as np
import torch
from mindspore import nn

from src.layers.softmax import LastAxisSoftmax


class _Loss(nn.Cell):
    def __init__(self, cotangent):
        super().__init__()
        self.softmax = LastAxisSoftmax()
        self.cotangent = cotangent

    def construct(self, x):
        return (self.softmax(x) * self.cotangent).sum()


def test_last_axis_softmax_value_and_gradient_match_torch():
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((2, 3, 5, 7))).astype(np.float32)
    cotangent = rng.standard_normal(x.shape).astype(np.float32)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        out = LastAxisSoftmax()(ms.Tensor(x)).asnumpy()
        grad = ms.jit(ms.grad(_Loss(ms.Tensor(cotangent)), 0))(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    tx = torch.tensor(x, requires_grad=True)
    ref = torch.softmax(tx, -1)
    (ref * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
