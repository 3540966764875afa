"""``src.layers.attention.softmax_last_axis`` (the memory-lean softmax of the attention layers) equals
``torch.softmax`` over the last axis, values and gradients, on scores with masked keys (the -1e9 bias of
``_additive``) and a fully masked row."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

from src.layers.attention import softmax_last_axis

torch = pytest.importorskip("torch")


def test_softmax_last_axis_equals_torch_with_masked_keys():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 4.0, (2, 3, 5, 7)).astype(np.float32)
    scores[0, :, :, 5:] -= 1e9  # masked keys
    scores[1, 2, 4, :] -= 1e9  # a fully masked row: uniform weights
    upstream = rng.normal(size=scores.shape).astype(np.float32)

    def loss(x):
        return (softmax_last_axis(x) * ms.Tensor(upstream)).sum()

    ours = softmax_last_axis(ms.Tensor(scores)).asnumpy()
    grad = ms.grad(loss)(ms.Tensor(scores)).asnumpy()

    ref_in = torch.tensor(scores, requires_grad=True)
    ref = torch.softmax(ref_in, dim=-1)
    (ref * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, ref_in.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1, 2, 4], np.full(7, 1.0 / 7.0, np.float32), rtol=1e-6)
    np.testing.assert_allclose(ours, ops.softmax(ms.Tensor(scores), -1).asnumpy(), rtol=1e-5, atol=1e-7)
