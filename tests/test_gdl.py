"""Gradient Decoupled Layer: exact identity forward, lambda-scaled input gradient, full affine gradients."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.models.defrcn.gdl import AffineLayer, DecoupledAffine, GradientDecoupleLayer


class _GradAll(nn.Cell):
    """Gradients of ``net`` w.r.t. its input and its trainable parameters for a given output gradient."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)

    def construct(self, x, sens):
        return self.grad(self.net, self.params)(x, sens)


def _data(seed=0, shape=(2, 5, 3, 4)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.75])
def test_gdl_scales_input_gradient(lam):
    x, g = _data()
    (dx,), _ = _GradAll(GradientDecoupleLayer(lam))(Tensor(x), Tensor(g))
    np.testing.assert_allclose(dx.asnumpy(), lam * g, rtol=1e-6, atol=0)


def test_gdl_forward_is_exact_identity():
    x, _ = _data(1)
    x[0, 0, 0, 0] = -0.0
    x[1, 1, 1, 1] = 3.0e38
    subnormal = x.copy()
    subnormal[1, 2, 2, 2] = 1.0e-40
    out = GradientDecoupleLayer(0.01)(Tensor(subnormal)).asnumpy()
    assert out.tobytes() == subnormal.tobytes()
    # The CPU multiply flushes subnormals to zero, so the affine check uses normal numbers only.
    affine_out = DecoupledAffine(5, 0.01)(Tensor(x)).asnumpy()
    # weight 1 and bias 0 at init: 1*x + 0 is exact in IEEE arithmetic (up to the sign of zero).
    np.testing.assert_array_equal(affine_out, x)


def test_gdl_negative_scale_rejected():
    with pytest.raises(ValueError):
        GradientDecoupleLayer(-0.1)


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.75])
def test_decoupled_affine_gradients(lam):
    x, g = _data(2)
    rng = np.random.default_rng(3)
    net = DecoupledAffine(5, lam)
    w = rng.uniform(0.5, 2.0, (1, 5, 1, 1)).astype(np.float32)
    b = rng.standard_normal((1, 5, 1, 1)).astype(np.float32)
    net.weight.set_data(Tensor(w))
    net.bias.set_data(Tensor(b))
    out = net(Tensor(x)).asnumpy()
    np.testing.assert_allclose(out, w * x + b, rtol=1e-6, atol=1e-6)
    (dx,), (dw, db) = _GradAll(net)(Tensor(x), Tensor(g))
    np.testing.assert_allclose(dx.asnumpy(), lam * w * g, rtol=1e-5, atol=1e-7)
    # The affine parameters are behind the decoupling: their gradients are never scaled by lambda.
    np.testing.assert_allclose(dw.asnumpy(), (x * g).sum(axis=(0, 2, 3), keepdims=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db.asnumpy(), g.sum(axis=(0, 2, 3), keepdims=True), rtol=1e-5, atol=1e-5)


def test_affine_parameter_names_and_shapes():
    class Holder(nn.Cell):
        def __init__(self):
            super().__init__()
            self.affine_rcnn = DecoupledAffine(8, 0.75)
            self.affine_plain = AffineLayer(8, bias=False)

        def construct(self, x):
            return self.affine_plain(self.affine_rcnn(x))

    params = {p.name: p.shape for p in Holder().get_parameters()}
    assert params == {"affine_rcnn.weight": (1, 8, 1, 1), "affine_rcnn.bias": (1, 8, 1, 1),
                      "affine_plain.weight": (1, 8, 1, 1)}
