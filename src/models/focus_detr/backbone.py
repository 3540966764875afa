"""Multi-level backbones of Focus-DETR: ResNet res3-res5 or Swin stages 1-3 (strides 8, 16, 32).

detrex configures Focus-DETR with a detectron2 ``ResNet`` (``BasicStem`` + bottleneck stages with the stride on
the 3x3 conv, FrozenBN everywhere, ``out_features=["res3", "res4", "res5"]``, ``freeze_at=1``). That network
computes exactly what the torchvision v1.5 trunk of :mod:`src.backbones.resnet` computes, only under other
parameter names, so this module reuses :class:`src.backbones.resnet.ResNet` (its ``conv1/bn1/maxpool`` stem and
``layer1..4`` stages are called one after the other and the last three stage outputs are returned) and gives the
detectron2 -> MindSpore name mapping as :func:`detectron2_to_mindspore_key` for the checkpoint converter.

Freezing follows detectron2's ``freeze_at=1``: only the stem is frozen; ``layer1`` (res2) trains.

Swin (:func:`build_backbone` with a :data:`src.backbones.swin.SWIN_CONFIGS` preset name) follows detrex
``projects/focus_detr/configs/models/focus_detr_swin_{tiny_224,base_384,large_384}.py``: detectron2's
``SwinTransformer`` with ``out_indices=(1, 2, 3)`` (channels ``2C, 4C, 8C``: 192/384/768 for Swin-T, 256/512/1024 for
Swin-B, 384/768/1536 for Swin-L), stochastic depth 0.1 for Swin-T and detectron2's default 0.2 otherwise, nothing
frozen. :class:`src.backbones.swin.SwinTransformer` is that network under the same parameter names, so it is the
model's ``backbone`` directly and the detrex keys ``backbone.patch_embed.*``, ``backbone.layers.N.blocks.M.*``,
``backbone.norm{1,2,3}.*`` need no rename.
"""

import re
from typing import Optional, Tuple

from mindspore import nn, ops

from src.backbones.resnet import RESNET_DEPTHS, ResNet
from src.backbones.swin import SWIN_CONFIGS, build_swin
from src.layers.frozen_bn import conv_frozen_bn

OUT_CHANNELS = (512, 1024, 2048)
OUT_STRIDES = (8, 16, 32)
# res2 in front: the MindSpore model zoo's 5-scale Focus-DETR reads C2..C5 (strides 4-32).
RES2_CHANNELS = 256

# Stochastic-depth rate of each Swin preset in the detrex Focus-DETR configs (Swin-T sets 0.1; the others keep
# detectron2's SwinTransformer default).
SWIN_DROP_PATH = {"swin_t": 0.1}
SWIN_DEFAULT_DROP_PATH = 0.2

_D2_STEM = re.compile(r"^backbone\.stem\.conv1\.(weight|norm\.(weight|bias|running_mean|running_var))$")
_D2_BLOCK = re.compile(
    r"^backbone\.res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(weight|norm\.(weight|bias|running_mean|running_var))$"
)


def detectron2_to_mindspore_key(name: str) -> Optional[str]:
    """Map a detectron2 ResNet key (as stored in the detrex Focus-DETR checkpoints) to this backbone's name.

    Mapping (``k`` = 2..5, ``b`` = block index, ``i`` = 1..3; FrozenBN keeps torch's buffer names here):

    - ``backbone.stem.conv1.weight`` -> ``backbone.body.conv1.weight``
    - ``backbone.stem.conv1.norm.{weight,bias,running_mean,running_var}`` -> ``backbone.body.bn1.*``
    - ``backbone.res{k}.{b}.conv{i}.weight`` -> ``backbone.body.layer{k-1}.{b}.conv{i}.weight``
    - ``backbone.res{k}.{b}.conv{i}.norm.*`` -> ``backbone.body.layer{k-1}.{b}.bn{i}.*``
    - ``backbone.res{k}.0.shortcut.weight`` -> ``backbone.body.layer{k-1}.0.downsample.0.weight``
    - ``backbone.res{k}.0.shortcut.norm.*`` -> ``backbone.body.layer{k-1}.0.downsample.1.*``

    Args:
        name: a state-dict key.

    Returns:
        str or None: the MindSpore parameter name, or None when ``name`` is not a detectron2 ResNet key
        (e.g. neck/transformer keys, which the caller maps separately).
    """
    stem = _D2_STEM.match(name)
    if stem:
        leaf = stem.group(1)
        if leaf == "weight":
            return "backbone.body.conv1.weight"
        return f"backbone.body.bn1.{stem.group(2)}"
    block = _D2_BLOCK.match(name)
    if not block:
        return None
    stage, index, module, leaf, norm_leaf = block.groups()
    prefix = f"backbone.body.layer{int(stage) - 1}.{index}"
    if module == "shortcut":
        return f"{prefix}.downsample.0.weight" if leaf == "weight" else f"{prefix}.downsample.1.{norm_leaf}"
    conv_id = module[-1]
    return f"{prefix}.conv{conv_id}.weight" if leaf == "weight" else f"{prefix}.bn{conv_id}.{norm_leaf}"


class MultiLevelResNet(nn.Cell):
    """ResNet-50/101 trunk returning res3, res4 and res5 (detectron2 ``out_features``), optionally res2 too.

    Args:
        name: ``"resnet50"`` or ``"resnet101"``.
        freeze_stem: freeze the stem (detectron2 ``freeze_at=1``); FrozenBN statistics are never trained.
        train_backbone: if False every backbone parameter is frozen.
        with_res2: also return res2 first (the MindSpore model zoo's 5-scale Focus-DETR, ``return_interm_indices
            = [0, 1, 2, 3]``).

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]`` normalized image.

    Outputs:
        tuple[Tensor[float32]]: (``[B, 256, H/4, W/4]`` with ``with_res2``), ``[B, 512, H/8, W/8]``,
        ``[B, 1024, H/16, W/16]``, ``[B, 2048, H/32, W/32]`` (sizes rounded up as the strided convs do).

    Raises:
        ValueError: if ``name`` is unknown.
    """

    num_channels = OUT_CHANNELS
    strides = OUT_STRIDES

    def __init__(self, name: str = "resnet50", freeze_stem: bool = True, train_backbone: bool = True,
                 with_res2: bool = False):
        super().__init__()
        self.with_res2 = with_res2
        if name not in RESNET_DEPTHS:
            raise ValueError(f"unknown backbone {name!r}; supported: {sorted(RESNET_DEPTHS)}")
        self.body = ResNet(RESNET_DEPTHS[name])
        for param in self.body.get_parameters():
            # Names may or may not carry the ``body.`` prefix yet, depending on when MindSpore renames them.
            local = param.name[len("body."):] if param.name.startswith("body.") else param.name
            in_stem = local.startswith(("conv1.", "bn1."))
            if not train_backbone or (freeze_stem and in_stem):
                param.requires_grad = False

    def construct(self, image):
        body = self.body
        x = body.maxpool(ops.relu(conv_frozen_bn(body.conv1, body.bn1, image)))
        res2 = body.layer1(x)
        res3 = body.layer2(res2)
        res4 = body.layer3(res3)
        res5 = body.layer4(res4)
        if self.with_res2:
            return res2, res3, res4, res5
        return res3, res4, res5


def build_backbone(name: str, train_backbone: bool = True,
                   with_res2: bool = False) -> Tuple[nn.Cell, Tuple[int, ...]]:
    """Build the Focus-DETR backbone ``name`` and return it with its output channel counts.

    Args:
        name: ``"resnet50"``, ``"resnet101"`` or a Swin preset of :data:`src.backbones.swin.SWIN_CONFIGS`
            (``"swin_t"``, ``"swin_b_384"``, ``"swin_l_384"``, ...).
        train_backbone: if False every backbone parameter is frozen (the ResNet stem always is).
        with_res2: ResNet only: also return res2 (stride 4) first.

    Returns:
        tuple: the Cell (``image [B, 3, H, W] -> maps at strides (4,) 8, 16, 32``, sizes ``ceil(H / s)``) and its
        output channels.

    Raises:
        ValueError: if ``name`` is neither a ResNet nor a Swin preset, or ``with_res2`` is asked of a Swin.
    """
    if name in RESNET_DEPTHS:
        channels = ((RES2_CHANNELS,) if with_res2 else ()) + OUT_CHANNELS
        return MultiLevelResNet(name, freeze_stem=True, train_backbone=train_backbone, with_res2=with_res2), channels
    if with_res2:
        raise ValueError(f"with_res2 (backbone_levels 4) needs a ResNet backbone, got {name!r}")
    if name in SWIN_CONFIGS:
        swin = build_swin(name, out_indices=(1, 2, 3), drop_path_rate=SWIN_DROP_PATH.get(name, SWIN_DEFAULT_DROP_PATH))
        if not train_backbone:
            for param in swin.get_parameters():
                param.requires_grad = False
        return swin, swin.out_channels
    raise ValueError(f"unknown backbone {name!r}; supported: {sorted(RESNET_DEPTHS) + sorted(SWIN_CONFIGS)}")
