"""benchmarks.forward_grad_conv: its hand-written convolution gradients against torch's autograd and MindSpore's
built-in gradient (the memory figures of ``bench_train_memory.py convs --conv forward`` mean nothing if the
gradient is wrong)."""

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import ops

from benchmarks.forward_grad_conv import ForwardGradConv2d

# (kernel, stride, dilation, input H x W): padding dilation * (k // 2) as ResNet pads; odd and even sizes, since
# a strided convolution leaves the last row/column unread for some of them.
CASES = [(1, 1, 1, (9, 11)), (1, 2, 1, (9, 10)), (3, 1, 1, (8, 11)), (3, 2, 1, (9, 10)), (3, 1, 2, (9, 11)),
         (3, 2, 2, (12, 13)), (7, 2, 1, (15, 16))]


def _grads(conv, x, w, cotangent):
    def loss(a, b):
        return (conv(a, b) * cotangent).sum()

    return [g.asnumpy() for g in ms.grad(loss, (0, 1))(ms.Tensor(x), ms.Tensor(w))]


@pytest.mark.parametrize("kernel,stride,dilation,size", CASES)
def test_gradients_match_torch_and_builtin(kernel, stride, dilation, size):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation)
    padding = dilation * (kernel // 2)
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    out = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation)
    cotangent = rng.standard_normal(out.shape).astype(np.float32)
    (out * torch.tensor(cotangent)).sum().backward()

    custom = ForwardGradConv2d()
    ours = _grads(lambda a, b: custom(a, b, stride, padding, dilation), x, w, ms.Tensor(cotangent))
    builtin = _grads(lambda a, b: ops.conv2d(a, b, None, stride, "pad", padding, dilation), x, w,
                     ms.Tensor(cotangent))
    for mine, reference, other in zip(ours, (tx.grad.numpy(), tw.grad.numpy()), builtin):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mine, other, rtol=1e-4, atol=1e-4)


def test_graph_mode_strided_gradients_match_torch():
    """The custom ``bprop`` also compiles and holds in graph mode (where ``ops.conv2d`` inside it did not)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    out = torch.nn.functional.conv2d(tx, tw, stride=2, padding=1)
    cotangent = rng.standard_normal(out.shape).astype(np.float32)
    (out * torch.tensor(cotangent)).sum().backward()

    class Loss(ms.nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv = ForwardGradConv2d()
            self.cotangent = ms.Tensor(cotangent)

        def construct(self, a, b):
            return (self.conv(a, b, 2, 1, 1) * self.cotangent).sum()

    gx, gw = ms.grad(Loss(), (0, 1))(ms.Tensor(x), ms.Tensor(w))
    np.testing.assert_allclose(gx.asnumpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw.asnumpy(), tw.grad.numpy(), rtol=1e-4, atol=1e-4)
