"""ChannelMapper neck of Focus-DETR (detrex ``detrex/modeling/neck/channel_mapper.py``, as configured in
``projects/focus_detr/configs/models/focus_detr_r50.py``).

Each backbone level (res3, res4, res5) goes through a 1x1 conv (with bias) and GroupNorm(32) to ``out_channels``;
one extra level comes from a 3x3 stride-2 conv (padding 1) + GroupNorm applied to the *raw* last backbone level,
giving 4 scales with strides 8, 16, 32, 64. No activation (the config leaves it out).

Parameter names follow the detrex state dict: ``convs.{i}.conv.{weight,bias}``, ``convs.{i}.norm.{weight,bias}``,
``extra_convs.0.conv.*``, ``extra_convs.0.norm.*``; :class:`GroupNorm` keeps torch's ``weight``/``bias`` names,
so these keys need no rename.
"""

from typing import Sequence

from mindspore import Parameter, nn, ops
from mindspore.common import dtype as mstype
from mindspore.common.initializer import initializer

from src.layers.expand import expand_to


class GroupNorm(nn.Cell):
    """Group normalization with torch ``nn.GroupNorm`` semantics and parameter names.

    Biased variance over (channels of the group, H, W), ``eps`` inside the square root, per-channel affine.

    Args:
        num_groups: groups; must divide ``num_channels``.
        num_channels: channels ``C``.
        eps: added to the variance (torch default 1e-5).

    Raises:
        ValueError: if ``num_groups`` does not divide ``num_channels``.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_groups {num_groups} must divide num_channels {num_channels}")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = Parameter(initializer("ones", (num_channels,), mstype.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (num_channels,), mstype.float32), name="bias")

    def construct(self, x):
        """Normalize ``x`` (Tensor[float32] ``[B, C, H, W]``); returns the same shape."""
        batch, channels, height, width = x.shape
        grouped = x.reshape(batch, self.num_groups, -1)
        # Statistics and affine parameters are expanded to the full shape before each element-wise op: broadcasting
        # ones keep tensor-sized buffers per node in a compiled CPU graph (benchmarks/README.md, Focus-DETR memory).
        centered = grouped - expand_to(grouped.mean(axis=-1, keep_dims=True), grouped.shape)
        var = ops.square(centered).mean(axis=-1, keep_dims=True)
        normed = (centered / expand_to(ops.sqrt(var + self.eps), grouped.shape)).reshape(x.shape)
        return (normed * expand_to(self.weight.reshape(1, -1, 1, 1), x.shape)
                + expand_to(self.bias.reshape(1, -1, 1, 1), x.shape))


class ConvNorm(nn.Cell):
    """``norm(conv(x))`` with the detrex ``ConvNormAct`` child names ``conv`` and ``norm`` (no activation).

    The conv uses MindSpore's default init, which is torch's (Kaiming-uniform with a=sqrt(5), uniform bias).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size; padding is ``(kernel_size - 1) // 2``.
        stride: conv stride.
        num_groups: GroupNorm groups.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, num_groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="pad",
                              padding=(kernel_size - 1) // 2, has_bias=True)
        self.norm = GroupNorm(num_groups, out_channels)

    def construct(self, x):
        """``[B, in, H, W]`` float32 -> ``[B, out, ceil(H/stride), ceil(W/stride)]`` float32."""
        return self.norm(self.conv(x))


class ChannelMapper(nn.Cell):
    """Maps backbone levels to a common width and adds extra stride-2 levels.

    Args:
        in_channels: channels of the input levels (e.g. ``(512, 1024, 2048)`` for R50 res3-5).
        out_channels: output width (256).
        num_outs: number of outputs; ``num_outs - len(in_channels)`` extra levels (Focus-DETR: 4, one extra).
        kernel_size: kernel of the per-level convs (1).
        num_groups: GroupNorm groups (32).

    Raises:
        ValueError: if ``num_outs < len(in_channels)``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 4, kernel_size: int = 1,
                 num_groups: int = 32):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs {num_outs} < number of inputs {len(in_channels)}")
        self.convs = nn.CellList([ConvNorm(c, out_channels, kernel_size, 1, num_groups) for c in in_channels])
        extra = []
        for i in range(len(in_channels), num_outs):
            # The first extra level reads the raw last backbone map (as detrex), later ones the previous extra.
            source = in_channels[-1] if i == len(in_channels) else out_channels
            extra.append(ConvNorm(source, out_channels, 3, 2, num_groups))
        self.extra_convs = nn.CellList(extra)

    def construct(self, features):
        """Map the levels.

        Args:
            features (tuple[Tensor[float32]]): ``[B, C_i, H_i, W_i]`` per input level, finest first.

        Returns:
            tuple[Tensor[float32]]: ``num_outs`` maps ``[B, out_channels, H, W]``; extra levels halve the size
            (``ceil``) each time.
        """
        outs = ()
        for i, conv in enumerate(self.convs):
            outs = outs + (conv(features[i]),)
        last = features[-1]
        for conv in self.extra_convs:
            last = conv(last)
            outs = outs + (last,)
        return outs
