"""Channel-first linear layers (src/layers/channel_first.py) vs torch.nn.functional.linear, values and gradients."""

import mindspore as ms
import numpy as np
import torch
from mindspore import Tensor, nn

from src.layers.channel_first import dense_into_channel_first, dense_out_of_channel_first


class _Loss(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, x, weight, bias, cotangent):
        return (self.fn(x, weight, bias) * cotangent).sum()


def _check(fn, x, weight, bias, torch_fn):
    rng = np.random.default_rng(1)
    t_inputs = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    t_out = torch_fn(*t_inputs)
    cotangent = rng.standard_normal(tuple(t_out.shape)).astype(np.float32)
    (t_out * torch.tensor(cotangent)).sum().backward()

    out = fn(Tensor(x), Tensor(weight), Tensor(bias))
    assert out.shape == tuple(t_out.shape)
    np.testing.assert_allclose(out.asnumpy(), t_out.detach().numpy(), rtol=1e-5, atol=1e-5)
    grads = ms.grad(_Loss(fn), grad_position=(0, 1, 2))(Tensor(x), Tensor(weight), Tensor(bias), Tensor(cotangent))
    for name, got, ref in zip(("x", "weight", "bias"), grads, t_inputs):
        np.testing.assert_allclose(got.asnumpy(), ref.grad.numpy(), rtol=1e-5, atol=1e-4, err_msg=name)


def test_dense_into_channel_first_is_linear_transposed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6)).astype(np.float32)  # [B, L, C_in]
    weight = rng.standard_normal((5, 6)).astype(np.float32)  # [C_out, C_in]
    bias = rng.standard_normal(5).astype(np.float32)
    _check(dense_into_channel_first, x, weight, bias,
           lambda x, w, b: torch.nn.functional.linear(x, w, b).transpose(1, 2))


def test_dense_out_of_channel_first_is_linear_of_transposed():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 7)).astype(np.float32)  # [B, C_in, L]
    weight = rng.standard_normal((5, 6)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    _check(dense_out_of_channel_first, x, weight, bias,
           lambda x, w, b: torch.nn.functional.linear(x.transpose(1, 2), w, b))
