"""Batch normalization with frozen statistics and affine parameters.

Follows facebookresearch/detr ``models/backbone.py::FrozenBatchNorm2d`` (itself derived from torchvision): the
four tensors are constants, and ``eps`` is added to the variance *before* ``rsqrt`` so that checkpoints with
zero variance do not produce NaNs.
"""

import mindspore as ms
from mindspore import Parameter, nn, ops


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

    def construct(self, x):
        scale = self.weight * ops.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
