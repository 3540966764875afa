"""DeFRCN C4 detector: backbone layout and freezing, RPN proposals, ROI head dropout, end-to-end inference.

Tiny channel widths keep the graph-mode compiles fast; the layout (strides, block counts, names) is the real
one. References are written here from detectron2's definitions (torch functional ops, NumPy), not taken from
the code under test.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor

from src.models.defrcn.backbone import BottleneckBlock, ResNetC4, build_res5, c2_to_d2_name, d2_to_mindspore_name


def _set_random_params(cell, rng):
    for param in cell.get_parameters():
        shape = param.shape
        if param.name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif param.name.endswith(("norm.weight", "norm.bias", "running_mean")):
            value = rng.uniform(-0.5, 0.5, shape) + (1.0 if param.name.endswith("norm.weight") else 0.0)
        else:
            value = rng.normal(0.0, 0.1, shape)
        param.set_data(Tensor(value.astype(np.float32)))


def _torch_conv_norm(x, params, prefix, stride=1, padding=0):
    weight = torch.from_numpy(params[prefix + ".weight"])
    out = F.conv2d(x, weight, stride=stride, padding=padding)
    mean, var = (torch.from_numpy(params[f"{prefix}.norm.{k}"]) for k in ("running_mean", "running_var"))
    gamma, beta = (torch.from_numpy(params[f"{prefix}.norm.{k}"]) for k in ("weight", "bias"))
    return F.batch_norm(out, mean, var, gamma, beta, training=False, eps=1e-5)


def test_strided_bottleneck_matches_msra_definition():
    """Stride on the first 1x1 (MSRA), 3x3 unstrided, projection shortcut: checked against torch ops."""
    rng = np.random.default_rng(0)
    block = BottleneckBlock(8, 16, 4, stride=2, stride_in_1x1=True)
    _set_random_params(block, rng)
    params = {p.name: p.asnumpy() for p in block.get_parameters()}
    x = rng.normal(size=(1, 8, 9, 11)).astype(np.float32)
    xt = torch.from_numpy(x)
    out = F.relu(_torch_conv_norm(xt, params, "conv1", stride=2))
    out = F.relu(_torch_conv_norm(out, params, "conv2", padding=1))
    out = _torch_conv_norm(out, params, "conv3")
    expected = F.relu(out + _torch_conv_norm(xt, params, "shortcut", stride=2)).numpy()
    got = block(Tensor(x)).asnumpy()
    assert got.shape == (1, 16, 5, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_c4_backbone_strides_channels_and_freezing():
    backbone = ResNetC4(depth=50, stem_out_channels=8, res2_out_channels=32, freeze_at=3)
    res5 = build_res5(depth=50, res2_out_channels=32)
    image = Tensor(np.random.default_rng(1).normal(size=(2, 3, 70, 100)).astype(np.float32))
    res4 = backbone(image)
    assert res4.shape == (2, 128, 5, 7)  # ceil(70/16), ceil(100/16); 4x res2 channels
    assert res5(res4).shape == (2, 256, 3, 4)
    assert len(res5) == 3 and len(backbone.res4) == 6 and len(backbone.res3) == 4
    names = {p.name: p.requires_grad for p in backbone.get_parameters()}
    assert "res2.0.conv1.norm.running_var" in names and "res3.0.shortcut.weight" in names
    for name, trainable in names.items():
        should_train = name.startswith("res4.") and ".norm." not in name
        assert trainable == should_train, name
    assert all(p.requires_grad for p in res5.get_parameters() if ".norm." not in p.name)


def test_checkpoint_name_maps():
    assert c2_to_d2_name("conv1_w") == "backbone.stem.conv1.weight"
    assert c2_to_d2_name("res_conv1_bn_b") == "backbone.stem.conv1.norm.bias"
    assert c2_to_d2_name("res4_22_branch1_bn_s") == "backbone.res4.22.shortcut.norm.weight"
    assert c2_to_d2_name("res5_0_branch2b_w") == "roi_heads.res5.0.conv2.weight"
    assert c2_to_d2_name("fc1000_w") is None
    with pytest.raises(ValueError):
        c2_to_d2_name("res6_0_branch2a_w")
    assert d2_to_mindspore_name("roi_heads.box_predictor.cls_score.weight") == \
        "roi_heads.box_predictor.cls_score.weight"
    with pytest.raises(ValueError):
        d2_to_mindspore_name("backbone.fpn_lateral4.weight")
    with pytest.raises(ValueError):
        ResNetC4(depth=34)

