"""Batch normalization with frozen statistics and affine parameters.

Follows facebookresearch/detr ``models/backbone.py::FrozenBatchNorm2d`` (itself derived from torchvision): the
four tensors are constants, and ``eps`` is added to the variance *before* ``rsqrt`` so that checkpoints with
zero variance do not produce NaNs.
"""

import mindspore as ms
from mindspore import Parameter, nn, ops

from src.layers.expand import expand_to


class FrozenBatchNorm2d(nn.Cell):
    """BatchNorm2d whose statistics and affine parameters never change.

    Parameter names mirror the torch buffers (``weight``, ``bias``, ``running_mean``, ``running_var``) so that
    a torchvision/DETR state dict maps onto them without renaming. All four are created with
    ``requires_grad=False``; there is no ``num_batches_tracked``.

    Args:
        num_features: Number of channels ``C``.
        eps: Added to ``running_var`` before the reciprocal square root. DETR uses 1e-5.

    Inputs:
        x (Tensor[float32]): ``[B, C, H, W]``.

    Outputs:
        Tensor[float32]: ``[B, C, H, W]``, ``x * scale + shift`` with
        ``scale = weight * rsqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(ops.ones(num_features, ms.float32), name="weight", requires_grad=False)
        self.bias = Parameter(ops.zeros(num_features, ms.float32), name="bias", requires_grad=False)
        self.running_mean = Parameter(
            ops.zeros(num_features, ms.float32), name="running_mean", requires_grad=False
        )
        self.running_var = Parameter(
            ops.ones(num_features, ms.float32), name="running_var", requires_grad=False
        )

    def scale_shift(self):
        """``(scale, shift)``, each float32 ``[C]``: the per-channel affine map this layer applies."""
        scale = self.weight * ops.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def construct(self, x):
        scale, shift = self.scale_shift()
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def conv_frozen_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x):
    """``bn(conv(x))`` computed as one convolution with the scale folded into the weights, plus a bias.

    The frozen affine map is linear, so ``conv(x, w) * scale + shift == conv(x, w * scale) + shift``. Folding
    scales the small weight tensor instead of the large activation and replaces the broadcast add by a bias
    add: on CPU this removes about a quarter of a ResNet-50 forward's time (MindSpore's profiler, DETR-R50 at
    800x1066). Gradients still reach ``conv.weight`` (``scale`` is constant). The parameters keep their own
    names (``conv.weight``, ``bn.*``), so checkpoints are unchanged. The fold (:func:`fold_frozen_bn`) avoids a
    broadcasting multiply, which held about 600 MB in a DETR-R50 training step (``benchmarks/README.md``).

    Args:
        conv: a ``nn.Conv2d`` without bias; its stride, padding, dilation and groups are used.
        bn: the FrozenBatchNorm2d that follows it.
        x (Tensor[float32]): ``[B, C_in, H, W]``.

    Returns:
        Tensor[float32] ``[B, C_out, H', W']``, equal to ``bn(conv(x))`` up to float rounding.
    """
    weight, shift = fold_frozen_bn(conv.weight, bn)
    out = ops.conv2d(x, weight, stride=conv.stride, pad_mode=conv.pad_mode, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.group)
    return ops.bias_add(out, shift)


def fold_frozen_bn(weight, bn: FrozenBatchNorm2d):
    """The convolution weight with ``bn``'s scale folded in, and the shift to add after the convolution.

    The scale is broadcast to the weight's shape before the multiply: MindSpore 2.10's CPU ``Mul`` keeps two
    ``size_t`` index tables of the output's size for the life of a compiled graph when its operands' shapes
    differ (benchmarks/README.md, "Who holds it").

    Args:
        weight (Tensor[float32]): ``[C_out, C_in / groups, kh, kw]``.
        bn: the FrozenBatchNorm2d over the ``C_out`` output channels.

    Returns:
        tuple: the folded weight (same shape and dtype as ``weight``) and the shift, float32 ``[C_out]``.
    """
    scale, shift = bn.scale_shift()
    return weight * expand_to(scale.reshape(-1, 1, 1, 1), weight.shape), shift
