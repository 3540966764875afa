"""``src.layers.attention.SoftmaxLastAxis`` (the attention softmax with its written-out gradient) equals
``torch.softmax`` over the last axis, values and gradients, on scores with masked keys (the -1e9 bias of
``_additive``) and a fully masked row, in graph mode."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.layers.attention import SoftmaxLastAxis

torch = pytest.importorskip("torch")


class _WeightedSum(nn.Cell):
    """``sum(softmax(x) * upstream)``: its gradient with respect to ``x`` runs the Cell's ``bprop``."""

    def __init__(self, upstream):
        super().__init__()
        self.softmax = SoftmaxLastAxis()
        self.upstream = ms.Tensor(upstream)

    def construct(self, x):
        return (self.softmax(x) * self.upstream).sum()


def test_softmax_last_axis_equals_torch_with_masked_keys():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 4.0, (2, 3, 5, 7)).astype(np.float32)
    scores[0, :, :, 5:] -= 1e9  # masked keys
    scores[1, 2, 4, :] -= 1e9  # a fully masked row: uniform weights
    upstream = rng.normal(size=scores.shape).astype(np.float32)

    ours = SoftmaxLastAxis()(ms.Tensor(scores)).asnumpy()
    grad = ms.grad(_WeightedSum(upstream))(ms.Tensor(scores)).asnumpy()

    ref_in = torch.tensor(scores, requires_grad=True)
    ref = torch.softmax(ref_in, dim=-1)
    (ref * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, ref_in.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1, 2, 4], np.full(7, 1.0 / 7.0, np.float32), rtol=1e-6)
    assert np.abs(grad).max() > 1e-3  # the gradient path ran, not a zero tensor
