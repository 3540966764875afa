"""Focus-DETR weight converter on synthetic detrex checkpoints built from our own models' parameter lists.

The detrex names are produced here by an inverse mapping written for the test (detectron2 ResNet names,
LayerNorm/Embedding ``weight``/``bias``, Swin names unchanged), then the state dict gets what a detrex file also
holds: the duplicated shared heads and bookkeeping buffers. The full R50 4-scale model and the full Swin-T 4-scale
model (``backbone="swin_t"``) are used, so the key sets are those of the real checkpoints (including the denoising
label embedding ``label_enc.weight``).
"""

import re

import mindspore as ms
import numpy as np
import pytest

from src.convert_common import ConversionError
from src.models.focus_detr.convert import infer_backbone, map_focus_detr_state
from src.models.focus_detr.model import FocusDETR
from tools.convert_weights import main as convert_main

torch = pytest.importorskip("torch")

NUM_HEADS = 7  # decoder layers + 1 (two-stage / encoder head)
ENC_LAYERS = 6


def _to_detrex(name: str) -> str:
    """Our parameter name -> the detrex checkpoint key (written independently of the converter)."""
    stem = re.match(r"^backbone\.body\.(conv1|bn1)\.(\w+)$", name)
    if stem:
        return "backbone.stem.conv1.weight" if stem[1] == "conv1" else f"backbone.stem.conv1.norm.{stem[2]}"
    block = re.match(r"^backbone\.body\.layer(\d)\.(\d+)\.(.+)$", name)
    if block:
        rest = block[3]
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
        rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
        return f"backbone.res{int(block[1]) + 1}.{block[2]}.{rest}"
    for ours, theirs in ((".gamma", ".weight"), (".beta", ".bias"), (".embedding_table", ".weight")):
        if name.endswith(ours):
            return name[: -len(ours)] + theirs
    return name


def _shapes(model):
    return {p.name: tuple(p.shape) for p in model.get_parameters()}


def _synthetic_detrex_state(shapes, seed):
    """Return ``(detrex_state, expected, duplicates, extras)``: random values per parameter under detrex names."""
    rng = np.random.default_rng(seed)
    expected = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    state = {_to_detrex(name): value for name, value in expected.items()}
    assert len(state) == len(expected)
    duplicates = {}
    for i in range(NUM_HEADS):
        for leaf in ("weight", "bias"):
            duplicates[f"transformer.decoder.class_embed.{i}.{leaf}"] = f"class_embed.{i}.{leaf}"
            for layer in range(3):
                duplicates[f"transformer.decoder.bbox_embed.{i}.layers.{layer}.{leaf}"] = \
                    f"bbox_embed.{i}.layers.{layer}.{leaf}"
    for j in range(ENC_LAYERS):
        for leaf in ("weight", "bias"):
            duplicates[f"enhance_MCSP_layerlist.{j}.{leaf}"] = f"class_embed.{ENC_LAYERS}.{leaf}"
            duplicates[f"transformer.encoder.enhance_MCSP.{j}.{leaf}"] = f"class_embed.{ENC_LAYERS}.{leaf}"
    for dup, canonical in duplicates.items():
        state[dup] = state[canonical].copy()
    assert state["label_enc.weight"].shape == (80, 256)
    extras = []
    for key in list(state):
        if key.startswith("backbone.") and key.endswith(".norm.running_var"):
            extras.append(key.replace("running_var", "num_batches_tracked"))
            state[extras[-1]] = np.array(7, np.int64)
        block = re.match(r"^(backbone\.layers\.\d+\.blocks\.\d+\.attn)\.relative_position_bias_table$", key)
        if block:
            extras.append(f"{block[1]}.relative_position_index")
            state[extras[-1]] = rng.integers(0, 169, (49, 49))
    return state, expected, duplicates, extras


@pytest.fixture(scope="module")
def r50():
    shapes = _shapes(FocusDETR())
    state, expected, duplicates, extras = _synthetic_detrex_state(shapes, seed=0)
    return {"shapes": shapes, "state": state, "expected": expected, "duplicates": duplicates, "extras": extras}


def _save_pth(state, path):
    torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, "iteration": 89999}, path)


def test_r50_checkpoint_converts_completely(r50, tmp_path, capsys):
    source, output = tmp_path / "focus_detr_r50.pth", tmp_path / "out" / "focus_detr_r50.ckpt"
    _save_pth(r50["state"], source)
    assert convert_main(["--model", "focus_detr", "--source", str(source), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "backbone resnet50" in printed and "known-unused" not in printed
    _, report = map_focus_detr_state(r50["state"], r50["shapes"])
    assert report["mapped"] == len(r50["shapes"])
    assert report["duplicates"] == sorted(r50["duplicates"])
    assert len(report["duplicates"]) == 2 * NUM_HEADS + 6 * NUM_HEADS + 4 * ENC_LAYERS
    assert report["bookkeeping"] == sorted(r50["extras"]) and len(r50["extras"]) == 53
    assert report["unused"] == {}
    loaded = ms.load_checkpoint(str(output))
    assert set(loaded) == set(r50["expected"])
    for name, value in r50["expected"].items():
        np.testing.assert_array_equal(loaded[name].asnumpy(), value, err_msg=name)


def test_label_embedding_is_reported_when_the_target_network_has_none(r50):
    shapes = {k: v for k, v in r50["shapes"].items() if k != "label_enc.embedding_table"}
    params, report = map_focus_detr_state(r50["state"], shapes)
    assert set(params) == set(shapes)
    assert list(report["unused"]) == ["label_enc.weight"]


def test_swin_t_checkpoint_converts_completely(tmp_path, capsys):
    shapes = _shapes(FocusDETR(backbone="swin_t"))
    assert shapes["neck.convs.0.conv.weight"] == (256, 192, 1, 1)
    assert shapes["neck.extra_convs.0.conv.weight"] == (256, 768, 3, 3)
    assert not any(name.startswith("backbone.body.") for name in shapes)
    state, expected, duplicates, extras = _synthetic_detrex_state(shapes, seed=1)
    # detrex Swin-T keys, written out: patch embedding, 2/2/6/2 blocks of 13 tensors, 3 patch mergings, norm1-3.
    block = ("norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight", "attn.qkv.bias",
             "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias")
    swin_keys = {f"backbone.patch_embed.{k}" for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")}
    for stage, depth in enumerate((2, 2, 6, 2)):
        swin_keys |= {f"backbone.layers.{stage}.blocks.{b}.{k}" for b in range(depth) for k in block}
        if stage < 3:
            swin_keys |= {f"backbone.layers.{stage}.downsample.{k}"
                          for k in ("norm.weight", "norm.bias", "reduction.weight")}
    swin_keys |= {f"backbone.norm{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")}
    assert {k for k in state if k.startswith("backbone.") and k not in extras} == swin_keys
    assert len(extras) == 12  # one relative_position_index per Swin-T block (2 + 2 + 6 + 2)
    assert infer_backbone(state) == "swin_t"
    params, report = map_focus_detr_state(state, shapes)
    assert set(params) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert report["duplicates"] == sorted(duplicates)
    assert report["bookkeeping"] == sorted(extras)
    assert report["unused"] == {}
    # Through the CLI the Swin-T model is built from the weights alone (backbone detected).
    source, output = tmp_path / "focus_detr_swin_t.pth", tmp_path / "focus_detr_swin_t.ckpt"
    _save_pth(state, source)
    assert convert_main(["--model", "focus_detr", "--source", str(source), "--output", str(output)]) == 0
    assert "backbone swin_t" in capsys.readouterr().out
    loaded = ms.load_checkpoint(str(output))
    np.testing.assert_array_equal(loaded["backbone.layers.2.blocks.5.attn.qkv.weight"].asnumpy(),
                                  expected["backbone.layers.2.blocks.5.attn.qkv.weight"])


@pytest.mark.parametrize("dup, canonical", [
    ("transformer.decoder.bbox_embed.3.layers.1.weight", "bbox_embed.3.layers.1.weight"),
    ("transformer.decoder.class_embed.0.bias", "class_embed.0.bias"),
    ("transformer.encoder.enhance_MCSP.2.bias", "class_embed.6.bias"),
    ("enhance_MCSP_layerlist.5.weight", "class_embed.6.weight"),
])
def test_differing_duplicate_is_refused(r50, dup, canonical):
    state = dict(r50["state"])
    state[dup] = state[dup].copy()
    state[dup].flat[3] += 1e-3
    with pytest.raises(ConversionError) as err:
        map_focus_detr_state(state, r50["shapes"])
    lines = [line for line in str(err.value).splitlines() if dup in line]
    assert len(lines) == 1 and canonical in lines[0]


@pytest.mark.parametrize("case", ["missing", "extra", "shape"])
def test_bad_checkpoint_is_refused_and_nothing_written(r50, tmp_path, capsys, case):
    state = dict(r50["state"])
    if case == "missing":
        del state["transformer.encoder.layers.3.norm2.weight"]
        expected = ["transformer.encoder.layers.3.norm2.gamma"]
    elif case == "extra":
        state["transformer.encoder.layers.0.extra_gate.weight"] = np.zeros(3, np.float32)
        expected = ["transformer.encoder.layers.0.extra_gate.weight"]
    else:
        state["neck.convs.1.conv.bias"] = np.zeros(255, np.float32)
        expected = ["neck.convs.1.conv.bias", "(255,)", "(256,)"]
    with pytest.raises(ConversionError) as err:
        map_focus_detr_state(state, r50["shapes"])
    for text in expected:
        assert text in str(err.value)
    source, out_dir = tmp_path / "bad.pth", tmp_path / "out"
    _save_pth(state, source)
    out_dir.mkdir()
    assert convert_main(["--model", "focus_detr", "--source", str(source), "--output", str(out_dir / "c.ckpt")]) == 1
    assert expected[0] in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []
