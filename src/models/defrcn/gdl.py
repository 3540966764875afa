"""Gradient Decoupled Layer (GDL) of DeFRCN.

Follows er-muyue/DeFRCN ``defrcn/modeling/meta_arch/gdl.py`` (the autograd function that passes features
through unchanged and scales the gradient) and the ``AffineLayer`` of ``defrcn/modeling/meta_arch/rcnn.py``
(a learnable per-channel scale and shift). DeFRCN puts one such block between the shared res4 features and
each head: ``y = weight * GDL_lambda(x) + bias``. The backward pass through the block is therefore

* dL/dx = lambda * weight * dL/dy (the head's gradient reaching the backbone is scaled by lambda),
* dL/dweight = sum over (N, H, W) of x * dL/dy and dL/dbias = sum over (N, H, W) of dL/dy (unscaled).

Lambda values used by DeFRCN's configs: 0.0 for the RPN everywhere (the RPN does not update the backbone),
0.75 for the R-CNN branch in base training, 0.01 (COCO) or 0.001 (VOC) for the R-CNN branch when fine-tuning.

The scaling is implemented with a Cell ``bprop``, so the forward pass is bit-exact identity (unlike the
``x * lam + stop_gradient(x * (1 - lam))`` trick, which rounds).
"""

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


class GradientDecoupleLayer(nn.Cell):
    """Identity in the forward pass; multiplies the incoming gradient by ``lam`` in the backward pass.

    Args:
        lam: gradient scale (float, >= 0). 0 blocks the gradient entirely.

    Inputs:
        x: tensor of any shape and float dtype.

    Outputs:
        ``x`` itself (same shape, dtype and values).

    Raises:
        ValueError: if ``lam`` is negative.
    """

    def __init__(self, lam: float):
        super().__init__()
        if lam < 0:
            raise ValueError(f"gradient scale must be >= 0, got {lam}")
        self.lam = float(lam)

    def construct(self, x: Tensor) -> Tensor:
        return x

    def bprop(self, x, out, dout):
        # Custom backward: the only input receives the scaled output gradient.
        return (dout * self.lam,)


class AffineLayer(nn.Cell):
    """Learnable per-channel affine map ``y = weight * x + bias`` on NCHW features (DeFRCN ``AffineLayer``).

    Equivalent to a 1x1 depthwise convolution with bias. Parameters are named ``weight`` and ``bias`` with
    shape (1, C, 1, 1), like the torch module, so a DeFRCN checkpoint's ``affine_rpn.*`` / ``affine_rcnn.*``
    tensors load without reshaping.

    Args:
        num_channels: C.
        bias: whether to learn the shift (DeFRCN always uses True).

    Inputs:
        x: float32 [N, C, H, W].

    Outputs:
        float32 [N, C, H, W]. At initialisation (weight 1, bias 0) this equals ``x`` exactly.
    """

    def __init__(self, num_channels: int, bias: bool = True):
        super().__init__()
        self.weight = Parameter(ops.ones((1, num_channels, 1, 1), ms.float32), name="weight")
        self.has_bias = bias
        if bias:
            self.bias = Parameter(ops.zeros((1, num_channels, 1, 1), ms.float32), name="bias")

    def construct(self, x: Tensor) -> Tensor:
        out = x * self.weight
        if self.has_bias:
            out = out + self.bias
        return out


class DecoupledAffine(AffineLayer):
    """The full DeFRCN decoupling block: ``AffineLayer(GradientDecoupleLayer(x))``.

    Forward: ``weight * x + bias`` per channel. Backward: the gradient reaching ``x`` is scaled by ``lam``;
    ``weight`` and ``bias`` receive their full gradient. Parameter names are those of :class:`AffineLayer`.

    Args:
        num_channels: C (1024 for the res4 features of DeFRCN's C4 backbone).
        lam: gradient scale of the decoupling (see the module docstring for DeFRCN's values).
        bias: whether to learn the shift.

    Inputs:
        x: float32 [N, C, H, W].

    Outputs:
        float32 [N, C, H, W].
    """

    def __init__(self, num_channels: int, lam: float, bias: bool = True):
        super().__init__(num_channels, bias)
        self.decouple = GradientDecoupleLayer(lam)

    def construct(self, x: Tensor) -> Tensor:
        out = self.decouple(x) * self.weight
        if self.has_bias:
            out = out + self.bias
        return out
