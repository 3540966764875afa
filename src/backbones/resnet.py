"""ResNet-50/101 backbone with frozen batch norm, in the torchvision layout DETR was trained with.

Follows torchvision ``models/resnet.py`` (v1.5: the stride sits on the 3x3 conv of each bottleneck) and
facebookresearch/detr ``models/backbone.py`` (FrozenBatchNorm2d everywhere, only ``layer4`` returned, padding
mask resized to the feature map with nearest interpolation, stem and ``layer1`` never trained). Parameter
names are those of torchvision under ``body.`` (e.g. ``body.layer1.0.downsample.1.running_mean``).
"""

from typing import Sequence

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from src.layers.frozen_bn import FrozenBatchNorm2d, conv_frozen_bn

RESNET_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # torchvision pads a k x k conv by dilation * (k // 2) and initializes with kaiming_normal(fan_out, relu).
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=dilation * (kernel // 2),
                     dilation=dilation, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


class Bottleneck(nn.Cell):
    """torchvision v1.5 bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (4x channels), residual, ReLU.

    Inputs:
        x (Tensor[float32]): ``[B, inplanes, H, W]``.

    Outputs:
        Tensor[float32]: ``[B, 4*planes, H/stride, W/stride]``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Cell = None):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride=stride, dilation=dilation)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = FrozenBatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.has_downsample = downsample is not None

    def construct(self, x):
        identity = x
        out = ops.relu(conv_frozen_bn(self.conv1, self.bn1, x))
        out = ops.relu(conv_frozen_bn(self.conv2, self.bn2, out))
        out = conv_frozen_bn(self.conv3, self.bn3, out)
        if self.has_downsample:
            identity = conv_frozen_bn(self.downsample[0], self.downsample[1], x)
        return ops.relu(out + identity)


class ResNet(nn.Cell):
    """ResNet trunk (no pooling head / fc), returning the ``layer4`` feature map.

    Args:
        depths: Blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        replace_stride_with_dilation: Three flags for layer2..4; DETR-DC5 uses ``(False, False, True)``.

    Inputs:
        x (Tensor[float32]): ``[B, 3, H, W]``, ImageNet-normalized RGB.

    Outputs:
        Tensor[float32]: ``[B, 2048, ceil(H/32), ceil(W/32)]`` (``/16`` with DC5).
    """

    def __init__(self, depths: Sequence[int], replace_stride_with_dilation: Sequence[bool] = (False,) * 3):
        super().__init__()
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, pad_mode="pad", padding=3, has_bias=False,
                               weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))
        self.bn1 = FrozenBatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self.layer1 = self._make_layer(64, depths[0])
        self.layer2 = self._make_layer(128, depths[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, depths[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, depths[3], stride=2, dilate=replace_stride_with_dilation[2])

    def _make_layer(self, planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.SequentialCell:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.SequentialCell([
                _conv(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride),
                FrozenBatchNorm2d(planes * Bottleneck.expansion),
            ])
        # As in torchvision, only the first block keeps the previous dilation; the rest use the new one.
        layers = [Bottleneck(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.SequentialCell(layers)

    def construct(self, x):
        x = self.maxpool(ops.relu(conv_frozen_bn(self.conv1, self.bn1, x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Backbone(nn.Cell):
    """DETR backbone: ResNet body plus the padding mask resized to the feature map.

    Args:
        name: ``"resnet50"`` or ``"resnet101"``.
        dilation: Replace the stride of ``layer4`` with dilation (DC5, output stride 16).
        train_backbone: If False every backbone parameter is frozen; if True only the stem and ``layer1`` are
            (DETR trains ``layer2..4`` at a lower learning rate).

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]``.
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.

    Outputs:
        Tuple of ``feature`` (Tensor[float32] ``[B, 2048, h, w]``) and ``mask`` (Tensor[bool] ``[B, h, w]``,
        nearest-downsampled, True on padding).

    Raises:
        ValueError: If ``name`` is not a supported ResNet.
    """

    num_channels = 2048

    def __init__(self, name: str = "resnet50", dilation: bool = False, train_backbone: bool = True):
        super().__init__()
        if name not in RESNET_DEPTHS:
            raise ValueError(f"unknown backbone {name!r}; supported: {sorted(RESNET_DEPTHS)}")
        self.body = ResNet(RESNET_DEPTHS[name], replace_stride_with_dilation=(False, False, dilation))
        for param in self.body.get_parameters():
            trainable_stage = any(f"layer{i}." in param.name for i in (2, 3, 4))
            if not train_backbone or not trainable_stage:
                param.requires_grad = False

    def construct(self, image, mask):
        feature = self.body(image)
        size = (feature.shape[2], feature.shape[3])
        small = ops.interpolate(mask[:, None].astype(ms.float32), size=size, mode="nearest")
        return feature, small[:, 0].astype(ms.bool_)
