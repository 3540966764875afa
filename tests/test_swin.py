"""Swin backbone vs transformers' SwinBackbone (detection semantics: always-partitioned windows, stage outputs
before downsampling, one LayerNorm per returned stage) with random weights copied across, in graph mode."""

import re

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn
from transformers import SwinConfig
from transformers.models.swin.modeling_swin import SwinBackbone

from src.backbones.swin import SWIN_CONFIGS, DropPath, SwinTransformer, build_swin

TINY = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 7}


def _hf_backbone(cfg):
    config = SwinConfig(
        image_size=224, patch_size=4, embed_dim=cfg["embed_dim"], depths=list(cfg["depths"]),
        num_heads=list(cfg["num_heads"]), window_size=cfg["window_size"], hidden_act="gelu", qkv_bias=True,
        drop_path_rate=0.0, out_features=["stage2", "stage3", "stage4"],
    )
    return SwinBackbone(config).eval()


def _hf_to_ours(hf_name):
    """transformers SwinBackbone key -> ours (= detrex/Microsoft layout without the ``backbone.`` prefix)."""
    rules = (
        (r"^swin\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^swin\.embeddings\.norm\.", "patch_embed.norm."),
        (r"^hidden_states_norms\.stage(\d)\.", lambda m: f"norm{int(m.group(1)) - 1}."),
        (r"^swin\.encoder\.", ""),
        (r"\.layernorm_before\.", ".norm1."),
        (r"\.layernorm_after\.", ".norm2."),
        (r"\.attention\.relative_position_bias\.relative_position_bias_table$", ".attn.relative_position_bias_table"),
        (r"\.attention\.o_proj\.", ".attn.proj."),
    )
    name = hf_name
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def _randomize_and_copy(hf, ours, seed):
    """Fill every HF parameter with random values (scaled so activations stay O(1)) and copy them into ours;
    HF's separate q/k/v projections are stacked row-wise into our packed ``attn.qkv``."""
    rng = np.random.default_rng(seed)
    params = dict(ours.parameters_and_names())
    loaded = set()
    qkv = {}
    with torch.no_grad():
        for name, tensor in hf.named_parameters():
            if name.startswith("swin.layernorm."):  # final classification LayerNorm, unused by the backbone
                continue
            shape = tuple(tensor.shape)
            if "relative_position_bias_table" in name:
                data = rng.standard_normal(shape) * 0.5
            elif len(shape) >= 2:
                data = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
            elif re.search(r"(norm|layernorm_\w+|norms\.stage\d)\.weight$", name):
                data = 1.0 + 0.2 * rng.standard_normal(shape)
            else:
                data = 0.1 * rng.standard_normal(shape)
            data = data.astype(np.float32)
            tensor.copy_(torch.from_numpy(data))
            match = re.search(r"^(.*)\.attention\.([qkv])_proj\.(weight|bias)$", name)
            if match:
                qkv[(_hf_to_ours(match.group(1)) + ".attn.qkv." + match.group(3), match.group(2))] = data
                continue
            target = _hf_to_ours(name)
            params[target].set_data(Tensor(data))
            loaded.add(target)
    for (target, part), _ in list(qkv.items()):
        if part == "q":
            stacked = np.concatenate([qkv[(target, p)] for p in "qkv"], 0)
            params[target].set_data(Tensor(stacked))
            loaded.add(target)
    assert loaded == set(params), sorted(set(params) ^ loaded)


def _compare(cfg, image_hw, batch, seed):
    ours = SwinTransformer(**cfg, drop_path_rate=0.3, out_indices=(1, 2, 3))  # drop path must be off in eval
    ours.set_train(False)
    hf = _hf_backbone(cfg)
    _randomize_and_copy(hf, ours, seed)
    image = np.random.default_rng(seed + 1).standard_normal((batch, 3, *image_hw)).astype(np.float32)
    outs = ours(Tensor(image))
    with torch.no_grad():
        ref = hf(torch.from_numpy(image)).feature_maps
    assert len(outs) == len(ref) == 3
    for i, (got, want) in enumerate(zip(outs, ref)):
        assert got.shape == tuple(want.shape), (i, got.shape, want.shape)
        np.testing.assert_allclose(got.asnumpy(), want.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"stage {i + 1}")


def test_tiny_matches_transformers():
    # 90x65 is not a multiple of the patch (input padding); the stage maps 23x17, 12x9, 6x5, 3x3 are all padded
    # to the 7x7 window and have odd sizes at every patch merging.
    _compare(TINY, (90, 65), batch=2, seed=7)


def test_swin_t_matches_transformers():
    cfg = SWIN_CONFIGS["swin_t"]
    _compare(cfg, (224, 224), batch=1, seed=3)


def test_parameter_names_follow_reference_layout():
    names = {p.name for p in build_swin("swin_t").get_parameters()}
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
                "layers.0.blocks.0.norm1.weight", "layers.0.blocks.0.attn.relative_position_bias_table",
                "layers.0.blocks.1.attn.qkv.weight", "layers.0.blocks.1.attn.qkv.bias",
                "layers.2.blocks.5.attn.proj.weight", "layers.2.blocks.5.mlp.fc1.weight",
                "layers.3.blocks.1.mlp.fc2.bias", "layers.0.downsample.reduction.weight",
                "layers.2.downsample.norm.bias", "norm1.weight", "norm2.bias", "norm3.weight"):
        assert key in names, key
    assert "norm0.weight" not in names and not any("layers.3.downsample" in n for n in names)
    assert not any(n.endswith(("gamma", "beta")) for n in names)
    model = SwinTransformer(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=12)
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 1)
    assert model.out_channels == (16, 32, 64) and model.strides == (8, 16, 32)
    with pytest.raises(KeyError):
        build_swin("swin_xl")


def test_drop_path_only_in_training():
    layer = DropPath(0.5)
    x = Tensor(np.ones((64, 3, 5), np.float32))
    layer.set_train(False)
    np.testing.assert_array_equal(layer(x).asnumpy(), x.asnumpy())
    layer.set_train(True)
    out = layer(x).asnumpy()
    per_sample = out.reshape(64, -1)
    # Each sample is dropped as a whole (0) or kept and rescaled by 1 / keep_prob.
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert 5 < (per_sample[:, 0] == 0).sum() < 59


class _SumOutputs(nn.Cell):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def construct(self, x):
        a, b, c = self.backbone(x)
        return a.sum() + (b * b).sum() + c.mean()


def test_tiny_backward_in_graph_mode():
    cfg = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 7}
    ours = SwinTransformer(**cfg, drop_path_rate=0.0)
    hf = _hf_backbone(cfg)
    _randomize_and_copy(hf, ours, seed=11)
    image = np.random.default_rng(12).standard_normal((1, 3, 64, 72)).astype(np.float32)
    grad = ms.grad(_SumOutputs(ours))(Tensor(image)).asnumpy()
    x = torch.from_numpy(image).requires_grad_(True)
    a, b, c = hf(x).feature_maps
    (a.sum() + (b * b).sum() + c.mean()).backward()
    np.testing.assert_allclose(grad, x.grad.numpy(), atol=1e-4, rtol=1e-4)
