"""ResNet C4 backbone and res5 head in the detectron2 / MSRA layout used by DeFRCN.

Follows detectron2 ``modeling/backbone/resnet.py`` (``BasicStem``, ``BottleneckBlock``, ``make_stage``,
``build_resnet_backbone``) as configured by er-muyue/DeFRCN (``configs/Base-RCNN.yaml`` and
``defrcn/config/defaults.py``): R-101, ``OUT_FEATURES=["res4"]``, FrozenBN everywhere,
``STRIDE_IN_1X1=True`` (the MSRA Caffe2 weights put the stage's stride on the first 1x1 conv, not on the 3x3
as torchvision does; that is why :mod:`src.backbones.resnet` is not reused) and ``FREEZE_AT=3`` (stem, res2
and res3 are never trained). res5 is not part of the backbone: the C4 ``Res5ROIHeads`` runs it on pooled
7x7 regions, so :func:`build_res5` makes it as a separate Cell.

Input convention (handled by the data side, not here): images are **BGR** in [0, 255] minus the pixel mean
(103.53, 116.28, 123.675) with std 1, the Caffe normalisation the MSRA ImageNet weights expect.

Parameter names equal detectron2's, so a d2 / DeFRCN checkpoint maps by prefix only (see
:func:`c2_to_d2_name` for the MSRA ``R-101.pkl`` names and :func:`d2_to_mindspore_name` for a d2 state dict):
``stem.conv1.weight``, ``stem.conv1.norm.{weight,bias,running_mean,running_var}``,
``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``, ``res2.0.shortcut.weight``, ``res2.0.shortcut.norm.*``, ...
A conv and its norm form one Cell (:class:`Conv2dNorm`) as in detectron2's ``Conv2d(norm=...)`` wrapper.
"""

from __future__ import annotations

import re

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeNormal, initializer

from src.layers.frozen_bn import FrozenBatchNorm2d, fold_frozen_bn

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
"""Blocks in res2..res5 per ResNet depth (detectron2 ``num_blocks_per_stage``)."""


class Conv2dNorm(nn.Cell):
    """Bias-free convolution followed by FrozenBN, named like detectron2's ``Conv2d(..., norm=...)``.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: square kernel side.
        stride: convolution stride.
        padding: symmetric zero padding in pixels.
        dilation: kernel dilation.

    Inputs:
        x (Tensor[float32]): ``[B, in_channels, H, W]``.

    Outputs:
        Tensor[float32]: ``[B, out_channels, H', W']`` with ``H' = floor((H + 2p - d(k-1) - 1) / stride) + 1``.
        No activation (the caller applies ReLU where detectron2 does).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1):
        super().__init__()
        # detectron2 initialises every backbone conv with c2_msra_fill (kaiming normal, fan_out, ReLU gain).
        self.weight = Parameter(initializer(HeNormal(mode="fan_out", nonlinearity="relu"),
                                            (out_channels, in_channels, kernel_size, kernel_size), ms.float32),
                                name="weight")
        self.norm = FrozenBatchNorm2d(out_channels)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation

    def construct(self, x: Tensor) -> Tensor:
        # FrozenBN folded into the convolution, as src.layers.frozen_bn.conv_frozen_bn does for torchvision
        # ResNets: MindSpore 2.10's CPU broadcast multiply/add over a [B, C, H, W] activation keeps several
        # activation-sized buffers alive per call, which took the R-101 forward at 800x1333 to 10.9 GB.
        weight, shift = fold_frozen_bn(self.weight, self.norm)
        out = ops.conv2d(x, weight, None, self.stride, "pad", self.padding, self.dilation)
        return ops.bias_add(out, shift)


class BasicStem(nn.Cell):
    """7x7 stride-2 conv + FrozenBN + ReLU + 3x3 stride-2 max pool (detectron2 ``BasicStem``).

    Inputs:
        x (Tensor[float32]): ``[B, 3, H, W]``.

    Outputs:
        Tensor[float32]: ``[B, out_channels, ceil(H/4), ceil(W/4)]``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64):
        super().__init__()
        self.conv1 = Conv2dNorm(in_channels, out_channels, 7, stride=2, padding=3)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)

    def construct(self, x: Tensor) -> Tensor:
        return self.pool(ops.relu(self.conv1(x)))


class BottleneckBlock(nn.Cell):
    """detectron2 ``BottleneckBlock``: 1x1 -> 3x3 -> 1x1 with a projection shortcut when shapes change.

    Args:
        in_channels, out_channels: block input / output channels.
        bottleneck_channels: width of the 1x1 and 3x3 convs.
        stride: spatial stride of the block.
        stride_in_1x1: put the stride on the first 1x1 conv (MSRA / DeFRCN, True) or on the 3x3 (False).
        dilation: dilation of the 3x3 conv.

    Inputs:
        x (Tensor[float32]): ``[B, in_channels, H, W]``.

    Outputs:
        Tensor[float32]: ``[B, out_channels, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1,
                 stride_in_1x1: bool = True, dilation: int = 1):
        super().__init__()
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.shortcut = Conv2dNorm(in_channels, out_channels, 1, stride=stride)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1)
        self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
                                dilation=dilation)
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1)

    def construct(self, x: Tensor) -> Tensor:
        out = ops.relu(self.conv1(x))
        out = ops.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.has_shortcut else x
        return ops.relu(out + shortcut)


def make_stage(num_blocks: int, in_channels: int, bottleneck_channels: int, out_channels: int, first_stride: int,
               stride_in_1x1: bool = True) -> nn.SequentialCell:
    """A ResNet stage: ``num_blocks`` bottlenecks, only the first one strided (detectron2 ``make_stage``).

    Returns:
        ``nn.SequentialCell`` whose blocks are named ``0 .. num_blocks-1`` (d2 keys ``resK.i.*``).
    """
    blocks = []
    for i in range(num_blocks):
        blocks.append(BottleneckBlock(in_channels if i == 0 else out_channels, out_channels, bottleneck_channels,
                                      stride=first_stride if i == 0 else 1, stride_in_1x1=stride_in_1x1))
    return nn.SequentialCell(blocks)


def _stage_depths(depth) -> tuple:
    if isinstance(depth, int):
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; supported: {sorted(RESNET_DEPTHS)}")
        return RESNET_DEPTHS[depth]
    depths = tuple(int(d) for d in depth)
    if len(depths) != 4 or min(depths) < 1:
        raise ValueError(f"depth must be 50, 101 or four positive block counts, got {depth!r}")
    return depths


class ResNetC4(nn.Cell):
    """Stem + res2..res4 of a detectron2 ResNet, returning res4 (stride 16).

    Args:
        depth: 50, 101 or a 4-tuple of blocks per stage (res5's count is used by :func:`build_res5`).
        stem_out_channels: detectron2 ``STEM_OUT_CHANNELS`` (64).
        res2_out_channels: detectron2 ``RES2_OUT_CHANNELS`` (256); stage k doubles it (res4: 4x).
        stride_in_1x1: detectron2 ``STRIDE_IN_1X1`` (True for the MSRA weights DeFRCN uses).
        freeze_at: detectron2 ``FREEZE_AT``: 0 trains everything, 1 freezes the stem, 2 the stem and res2,
            3 (DeFRCN's default) also res3. Frozen convs get ``requires_grad=False``; FrozenBN is always frozen.

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]``, BGR Caffe-normalised (see the module docstring).

    Outputs:
        Tensor[float32]: res4 ``[B, 4 * res2_out_channels, ceil(H/16), ceil(W/16)]`` (1024 channels by default).

    Raises:
        ValueError: for an unsupported depth or ``freeze_at`` outside 0..4.
    """

    def __init__(self, depth=101, stem_out_channels: int = 64, res2_out_channels: int = 256,
                 stride_in_1x1: bool = True, freeze_at: int = 3):
        super().__init__()
        depths = _stage_depths(depth)
        if not 0 <= freeze_at <= 4:
            raise ValueError(f"freeze_at must be in 0..4 (stem, res2, res3, res4), got {freeze_at}")
        self.stem = BasicStem(3, stem_out_channels)
        bottleneck = res2_out_channels // 4
        self.res2 = make_stage(depths[0], stem_out_channels, bottleneck, res2_out_channels, 1, stride_in_1x1)
        self.res3 = make_stage(depths[1], res2_out_channels, bottleneck * 2, res2_out_channels * 2, 2,
                               stride_in_1x1)
        self.res4 = make_stage(depths[2], res2_out_channels * 2, bottleneck * 4, res2_out_channels * 4, 2,
                               stride_in_1x1)
        self.out_channels = res2_out_channels * 4
        self.stride = 16
        frozen = ("stem", "res2", "res3", "res4")[:freeze_at]
        for name, cell in (("stem", self.stem), ("res2", self.res2), ("res3", self.res3), ("res4", self.res4)):
            if name in frozen:
                for param in cell.get_parameters():
                    param.requires_grad = False

    def construct(self, image: Tensor) -> Tensor:
        return self.res4(self.res3(self.res2(self.stem(image))))


def build_res5(depth=101, res2_out_channels: int = 256, stride_in_1x1: bool = True) -> nn.SequentialCell:
    """res5 for the C4 ROI head (detectron2 ``Res5ROIHeads._build_res5_block``).

    Args:
        depth, res2_out_channels, stride_in_1x1: as :class:`ResNetC4` (the same values as the backbone).

    Returns:
        ``nn.SequentialCell`` mapping float32 ``[R, 4c, h, w]`` to ``[R, 8c, ceil(h/2), ceil(w/2)]``
        (c = ``res2_out_channels``; 1024 -> 2048 by default), first block strided.
    """
    depths = _stage_depths(depth)
    return make_stage(depths[3], res2_out_channels * 4, res2_out_channels * 2, res2_out_channels * 8, 2,
                      stride_in_1x1)


_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b)$")
_C2_LEAF = {"w": "weight", "bn_s": "norm.weight", "bn_b": "norm.bias"}
_C2_CONV = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def c2_to_d2_name(name: str):
    """Map an MSRA Caffe2 ``R-{50,101}.pkl`` blob name to the DeFRCN model's parameter name.

    Follows detectron2 ``checkpoint/c2_model_loading.py::convert_basic_c2_names`` for the names a ResNet
    classification pickle holds, then places res5 under ``roi_heads.`` as the C4 model does. The pickle has
    no BN running statistics: those keep their initial 0 / 1 (the FrozenBN then is a pure affine map, as in
    detectron2).

    Args:
        name: e.g. ``"conv1_w"``, ``"res_conv1_bn_s"``, ``"res3_0_branch2a_w"``, ``"res5_2_branch2c_bn_b"``.

    Returns:
        e.g. ``"backbone.stem.conv1.weight"``, ``"backbone.stem.conv1.norm.weight"``,
        ``"backbone.res3.0.conv1.weight"``, ``"roi_heads.res5.2.conv3.norm.bias"``; ``None`` for blobs the
        detector does not use (the ImageNet ``fc1000_*`` classifier).

    Raises:
        ValueError: for a name that is not part of a Caffe2 ResNet.
    """
    stem = {"conv1_w": "stem.conv1.weight", "res_conv1_bn_s": "stem.conv1.norm.weight",
            "res_conv1_bn_b": "stem.conv1.norm.bias"}
    if name in stem:
        return "backbone." + stem[name]
    if name.startswith("fc1000_"):
        return None
    match = _C2_BLOCK.match(name)
    if match is None or not 2 <= int(match.group(1)) <= 5:
        raise ValueError(f"not a Caffe2 ResNet blob name: {name!r}")
    stage, block, branch, leaf = match.groups()
    prefix = "roi_heads" if stage == "5" else "backbone"
    return f"{prefix}.res{stage}.{block}.{_C2_CONV[branch]}.{_C2_LEAF[leaf]}"


_D2_MODEL_KEY = re.compile(
    r"^(backbone\.(stem|res[234])\.|roi_heads\.(res5|box_predictor)\.|proposal_generator\.rpn_head\."
    r"|affine_(rpn|rcnn)\.)"
)


def d2_to_mindspore_name(key: str) -> str:
    """Name of the MindSpore :class:`~src.models.defrcn.model.DeFRCN` parameter holding d2 state-dict ``key``.

    The MindSpore model is laid out so that every DeFRCN / detectron2 C4 key is used unchanged (FrozenBN keeps
    torch's ``weight/bias/running_mean/running_var``, ``nn.Dense``/``nn.Conv2d`` weights are ``[out, in, ...]``
    like torch): ``backbone.{stem,res2,res3,res4}.*``, ``proposal_generator.rpn_head.{conv,objectness_logits,
    anchor_deltas}.{weight,bias}``, ``roi_heads.res5.*``, ``roi_heads.box_predictor.{cls_score,bbox_pred}.*``,
    ``affine_rpn.{weight,bias}``, ``affine_rcnn.{weight,bias}``. The converter should therefore copy tensors
    by name and only check shapes; this function is where that contract is enforced.

    Raises:
        ValueError: for a key outside that layout (e.g. an FPN checkpoint or a ``pixel_mean`` buffer).
    """
    if not _D2_MODEL_KEY.match(key) or key.endswith("num_batches_tracked"):
        raise ValueError(f"not a DeFRCN C4 parameter key: {key!r}")
    return key
