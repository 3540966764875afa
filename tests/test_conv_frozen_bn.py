"""src.layers.frozen_bn.conv_frozen_bn in a compiled (graph-mode) training graph: output and the gradient with
respect to the convolution weight against torch's autograd of ``bn(conv(x))`` with frozen statistics (the
scale is folded into the weight through a same-shape multiply, see benchmarks/README.md)."""

import mindspore as ms
import numpy as np
import torch
from mindspore import nn

from src.layers.frozen_bn import FrozenBatchNorm2d, conv_frozen_bn


class _Loss(nn.Cell):
    def __init__(self, net, cotangent):
        super().__init__()
        self.net, self.cotangent = net, cotangent

    def construct(self, a):
        return (self.net(a) * self.cotangent).sum()


def test_conv_frozen_bn_output_and_weight_gradient_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    gamma, beta = 0.5 + rng.random(4, dtype=np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), 0.5 + rng.random(4, dtype=np.float32)
    cotangent = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)

    conv = nn.Conv2d(3, 4, 3, stride=2, pad_mode="pad", padding=1, has_bias=False)
    conv.weight.set_data(ms.Tensor(w))
    bn = FrozenBatchNorm2d(4)
    for name, value in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)):
        getattr(bn, name).set_data(ms.Tensor(value))

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = conv, bn

        def construct(self, a):
            return conv_frozen_bn(self.conv, self.bn, a)

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        net = Net()
        out = net(ms.Tensor(x)).asnumpy()
        grad = ms.jit(ms.grad(_Loss(net, ms.Tensor(cotangent)), None, (conv.weight,)))
        weight_grad = grad(ms.Tensor(x))[0].asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)

    tw = torch.tensor(w, requires_grad=True)
    scale = torch.tensor(gamma) / torch.sqrt(torch.tensor(var) + 1e-5)
    shift = torch.tensor(beta) - torch.tensor(mean) * scale
    ref = torch.nn.functional.conv2d(torch.tensor(x), tw, stride=2, padding=1) * scale[:, None, None] \
        + shift[:, None, None]
    (ref * torch.tensor(cotangent)).sum().backward()
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weight_grad, tw.grad.numpy(), rtol=1e-5, atol=1e-5)
