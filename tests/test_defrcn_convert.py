"""DeFRCN weight conversion: detectron2 / DeFRCN .pth, MSRA Caffe2 R-101.pkl, torchvision resnet101 .pth.

Sources are synthesised from the parameter lists of our own models by inverse naming written here (not by the
converter's maps): every tensor holds distinct exact integers, so a value landing on the wrong parameter is
seen. The full-size tests use R-101; the refusal tests use one block per stage to stay fast.
"""

import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore.nn.utils import no_init_parameters

from src.models.defrcn.convert import ConversionError, convert_defrcn_checkpoint
from src.models.defrcn.model import DeFRCN
from src.models.defrcn.pcb import PCBFeatureExtractor

R101 = (3, 4, 23, 3)
R50 = (3, 4, 6, 3)
TINY = (1, 1, 1, 1)
EPS = 1e-5  # detectron2 FrozenBatchNorm2d default


def _shapes(cell) -> dict:
    return {p.name: tuple(p.shape) for p in cell.get_parameters()}


def _defrcn_shapes(num_classes, depths):
    with no_init_parameters():
        return _shapes(DeFRCN(num_classes=num_classes, depth=depths))


def _pcb_shapes(depths):
    with no_init_parameters():
        return _shapes(PCBFeatureExtractor(depths=depths))


def _value(index: int, shape) -> np.ndarray:
    # Exact in float32: index * 1000 + (0..250).
    size = int(np.prod(shape))
    return (np.arange(size, dtype=np.float32) % 251 + 1000.0 * index).reshape(shape)


_NORMED = r"(\.norm)?\.(weight|bias|running_mean|running_var)"
_D2_KEY = re.compile(
    rf"^(backbone\.(stem\.conv1|res[234]\.\d+\.(conv[123]|shortcut)){_NORMED}"
    rf"|roi_heads\.res5\.\d+\.(conv[123]|shortcut){_NORMED}"
    r"|roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)"
    r"|proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)"
    r"|affine_(rpn|rcnn)\.(weight|bias))$")


def _d2_source(shapes: dict) -> dict:
    """detectron2 key -> array. The DeFRCN Cell is named like detectron2, so the inverse map is the identity;
    the pattern above is detectron2's C4 key set written out independently."""
    assert all(_D2_KEY.match(name) for name in shapes), [n for n in shapes if not _D2_KEY.match(n)]
    return {name: _value(i, shape) for i, (name, shape) in enumerate(sorted(shapes.items()))}


_C2_BRANCH = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}


def _c2_blob_name(name: str):
    """MSRA Caffe2 blob name of a model parameter, None when the pickle has no such blob."""
    if name.endswith(("running_mean", "running_var")) or not name.startswith(("backbone.", "roi_heads.res5.")):
        return None
    leaf = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}
    if name.startswith("backbone.stem.conv1."):
        suffix = name[len("backbone.stem.conv1."):]
        return "conv1_w" if suffix == "weight" else "res_conv1_" + leaf[suffix]
    match = re.match(r"^(?:backbone|roi_heads)\.res(\d)\.(\d+)\.(conv[123]|shortcut)\."
                     r"(weight|norm\.weight|norm\.bias)$", name)
    stage, block, conv, suffix = match.groups()
    return f"res{stage}_{block}_{_C2_BRANCH[conv]}_{leaf[suffix]}"


def _c2_source(shapes: dict):
    """(blobs, blob name -> model parameter name) including the ImageNet classifier."""
    blobs, target = {}, {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        blob = _c2_blob_name(name)
        if blob is not None:
            blobs[blob] = _value(i, shape)
            target[blob] = name
    blobs["fc1000_w"] = _value(9000, (1000, 2048))
    blobs["fc1000_b"] = _value(9001, (1000,))
    return blobs, target


def _torchvision_source(shapes: dict) -> dict:
    """torchvision key -> tensor: the ``net.`` prefix removed, plus ``num_batches_tracked`` per BatchNorm."""
    state = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        assert name.startswith("net.")
        key = name[len("net."):]
        state[key] = torch.from_numpy(_value(i, shape))
        if key.endswith(".running_mean"):
            state[key.replace(".running_mean", ".num_batches_tracked")] = torch.tensor(7, dtype=torch.int64)
    return state


def _save_pth(path, state, wrap=True):
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in state.items()}
    obj = {"model": tensors, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 5},
           "iteration": 109999} if wrap else tensors
    torch.save(obj, path)
    return path


def _save_pkl(path, blobs):
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "__author__": "MSRA"}, f)
    return path


ANCHOR_KEY = "proposal_generator.anchor_generator.cell_anchors.0"


def _d2_cell_anchors() -> np.ndarray:
    """detectron2 v0.3 ``DefaultAnchorGenerator.generate_cell_anchors`` for DeFRCN's config (sizes 32..512,
    ratios 0.5/1/2), written out from its loop: area s^2, w = sqrt(area / r), h = r * w, size-major."""
    rows = []
    for size in (32, 64, 128, 256, 512):
        for ratio in (0.5, 1.0, 2.0):
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            rows.append((-w / 2, -h / 2, w / 2, h / 2))
    anchors = np.asarray(rows, np.float32)
    np.testing.assert_array_equal(anchors[1], [-16, -16, 16, 16])  # size 32, ratio 1
    return anchors


def _load(path) -> dict:
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def _leftovers(folder, output):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{output.name}"))


# ------------------------------------------------------------------------------------------- full R-101 sources
def test_defrcn_pth_r101_maps_every_key(tmp_path):
    """DeFRCN's own layout: R-101 C4 parameters plus detectron2 v0.3's persistent anchor buffer."""
    shapes = _defrcn_shapes(60, R101)
    source = {**_d2_source(shapes), ANCHOR_KEY: _d2_cell_anchors()}
    out = tmp_path / "defrcn.ckpt"
    report = convert_defrcn_checkpoint(_save_pth(tmp_path / "model_final.pth", source), out, "defrcn")
    assert report["num_classes"] == 60
    assert report["missing_by_design"] == [] and report["dropped"] == [ANCHOR_KEY]
    assert report["num_written"] == len(shapes) == len(source) - 1
    params = _load(out)
    assert set(params) == set(shapes)
    for name in ("backbone.stem.conv1.norm.running_var", "backbone.res4.22.conv2.weight",
                 "roi_heads.res5.0.shortcut.norm.bias", "roi_heads.box_predictor.bbox_pred.weight",
                 "proposal_generator.rpn_head.anchor_deltas.bias", "affine_rcnn.weight"):
        np.testing.assert_array_equal(params[name], source[name], err_msg=name)
    assert all(np.array_equal(params[k], source[k]) for k in shapes)


def test_msra_c2_pkl_r101_fills_backbone_and_res5(tmp_path):
    shapes = _defrcn_shapes(1, R101)
    blobs, target = _c2_source(shapes)
    out = tmp_path / "r101_c2.ckpt"
    report = convert_defrcn_checkpoint(_save_pkl(tmp_path / "R-101.pkl", blobs), out, "resnet_c2")
    params = _load(out)
    heads = {n for n in shapes if n.startswith(("proposal_generator.", "roi_heads.box_predictor.", "affine_"))}
    # 2 x 2 affine, 3 x 2 RPN head, 2 x 2 box predictor.
    assert set(report["missing_by_design"]) == heads and len(heads) == 14
    assert report["dropped"] == ["fc1000_b", "fc1000_w"]
    assert set(params) == set(shapes) - heads
    stats = {n for n in params if n.endswith(("running_mean", "running_var"))}
    assert set(report["filled"]) == stats and len(stats) == 2 * 104
    assert set(params) - stats == set(target.values())
    for blob, name in (("conv1_w", "backbone.stem.conv1.weight"), ("res_conv1_bn_s", "backbone.stem.conv1.norm.weight"),
                       ("res4_0_branch1_w", "backbone.res4.0.shortcut.weight"),
                       ("res4_22_branch2b_bn_b", "backbone.res4.22.conv2.norm.bias"),
                       ("res5_2_branch2c_bn_s", "roi_heads.res5.2.conv3.norm.weight"),
                       ("res2_1_branch2a_w", "backbone.res2.1.conv1.weight")):
        np.testing.assert_array_equal(params[name], blobs[blob], err_msg=blob)
    assert all(np.array_equal(params[name], blobs[blob]) for blob, name in target.items())
    # detectron2's FrozenBN init statistics: mean 0, variance 1 - eps, so rsqrt(var + eps) makes the norm x*s + b.
    for name in stats:
        expected = 0.0 if name.endswith("mean") else np.float32(1.0 - EPS)
        np.testing.assert_array_equal(params[name], np.full(shapes[name], expected, np.float32))
    var = params["roi_heads.res5.1.conv2.norm.running_var"]
    np.testing.assert_allclose(1.0 / np.sqrt(var.astype(np.float64) + EPS), 1.0, rtol=1e-7)


def test_torchvision_resnet101_into_pcb_extractor(tmp_path):
    shapes = _pcb_shapes(R101)
    state = _torchvision_source(shapes)
    out = tmp_path / "pcb_r101.ckpt"
    report = convert_defrcn_checkpoint(_save_pth(tmp_path / "resnet101.pth", state, wrap=False), out,
                                       "resnet_torchvision")
    params = _load(out)
    assert set(params) == set(shapes)
    assert len(report["dropped"]) == 104 and all(k.endswith("num_batches_tracked") for k in report["dropped"])
    for key in ("conv1.weight", "bn1.running_var", "layer3.22.bn2.weight", "layer4.0.downsample.0.weight",
                "layer4.0.downsample.1.running_mean", "fc.weight", "fc.bias"):
        np.testing.assert_array_equal(params["net." + key], state[key].numpy(), err_msg=key)
    assert all(np.array_equal(params[n], state[n[len("net."):]].numpy()) for n in shapes)


# ----------------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def tiny_sources():
    defrcn = _d2_source(_defrcn_shapes(5, TINY))
    blobs, _ = _c2_source(_defrcn_shapes(1, TINY))
    torchvision = _torchvision_source(_pcb_shapes(TINY))
    return {"defrcn": defrcn, "resnet_c2": blobs, "resnet_torchvision": torchvision}


def _write(tmp_path, kind, state):
    if kind == "resnet_c2":
        return _save_pkl(tmp_path / "src.pkl", state)
    return _save_pth(tmp_path / "src.pth", state, wrap=kind == "defrcn")


def _zeros_like(kind, shape):
    return np.zeros(shape, np.float32) if kind != "resnet_torchvision" else torch.zeros(shape)


EDITS = {
    "defrcn": ("roi_heads.res5.0.conv2.norm.running_mean", "backbone.res4.0.conv3.weight", "backbone.fpn.weight"),
    "resnet_c2": ("res5_0_branch2b_bn_b", "res3_0_branch1_w", "res6_0_branch2a_w"),
    "resnet_torchvision": ("layer2.0.downsample.1.bias", "layer4.0.conv3.weight", "layer5.0.conv1.weight"),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_refuses_missing_extra_and_misshaped_keys_without_writing(tmp_path, tiny_sources, kind):
    removed, reshaped, extra = EDITS[kind]
    state = dict(tiny_sources[kind])
    assert removed in state and reshaped in state and extra not in state
    del state[removed]
    state[reshaped] = _zeros_like(kind, (3, 2))
    state[extra] = _zeros_like(kind, (4,))
    out = tmp_path / "model.ckpt"
    with pytest.raises(ConversionError) as info:
        convert_defrcn_checkpoint(_write(tmp_path, kind, state), out, kind, depth=TINY)
    message = str(info.value)
    assert f"unmapped source key: {extra}" in message
    assert f"shape mismatch: {reshaped} source (3, 2)" in message
    assert "missing model parameter: " in message
    missing = {"defrcn": removed, "resnet_c2": "roi_heads.res5.0.conv2.norm.bias",
               "resnet_torchvision": "net." + removed}[kind]
    assert f"missing model parameter: {missing} " in message
    assert not out.exists() and _leftovers(out.parent, out) == []


@pytest.mark.parametrize("kind", sorted(EDITS))
def test_clean_tiny_source_converts(tmp_path, tiny_sources, kind):
    out = tmp_path / "model.ckpt"
    report = convert_defrcn_checkpoint(_write(tmp_path, kind, tiny_sources[kind]), out, kind, depth=TINY)
    assert out.is_file() and report["num_written"] == len(_load(out))
    assert _leftovers(tmp_path, out) == []


def test_failed_write_leaves_no_file(tmp_path, tiny_sources, monkeypatch):
    def write_half_then_fail(params, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", write_half_then_fail)
    out = tmp_path / "model.ckpt"
    with pytest.raises(OSError, match="disk full"):
        convert_defrcn_checkpoint(_write(tmp_path, "resnet_c2", tiny_sources["resnet_c2"]), out, "resnet_c2",
                                  depth=TINY)
    assert not out.exists() and _leftovers(tmp_path, out) == []


def test_tampered_anchor_buffer_is_refused_with_both_values(tmp_path, tiny_sources):
    anchors = _d2_cell_anchors()
    anchors[4] = (-40.0, -40.0, 40.0, 40.0)  # size 64 ratio 1 should be +-32
    state = {**tiny_sources["defrcn"], ANCHOR_KEY: anchors}
    out = tmp_path / "model.ckpt"
    with pytest.raises(ConversionError) as info:
        convert_defrcn_checkpoint(_write(tmp_path, "defrcn", state), out, "defrcn", depth=TINY)
    line = next(x for x in str(info.value).splitlines() if ANCHOR_KEY in x)
    source, model = line.split(" vs ")
    assert "-40.00 -40.00 40.00 40.00" in source and "40.00" not in model
    assert "-32.00 -32.00 32.00 32.00" in model and "-32.00 -32.00 32.00 32.00" not in source
    assert "-16.00 -16.00 16.00 16.00" in source  # the untouched rows are shown too
    assert not out.exists() and _leftovers(out.parent, out) == []


def test_existing_output_untouched_on_refusal(tmp_path, tiny_sources):
    state = dict(tiny_sources["defrcn"])
    state["pixel_mean"] = np.zeros((3, 1, 1), np.float32)
    out = tmp_path / "model.ckpt"
    out.write_bytes(b"previous")
    with pytest.raises(ConversionError, match="unmapped source key: pixel_mean"):
        convert_defrcn_checkpoint(_write(tmp_path, "defrcn", state), out, "defrcn", depth=TINY)
    assert out.read_bytes() == b"previous"


def test_box_predictor_removed_by_surgery_is_by_design_but_partial_removal_is_refused(tmp_path, tiny_sources):
    predictor = [k for k in tiny_sources["defrcn"] if k.startswith("roi_heads.box_predictor.")]
    assert len(predictor) == 4
    removed = {k: v for k, v in tiny_sources["defrcn"].items() if k not in predictor}
    out = tmp_path / "reset_remove.ckpt"
    report = convert_defrcn_checkpoint(_write(tmp_path, "defrcn", removed), out, "defrcn", depth=TINY)
    assert sorted(report["missing_by_design"]) == sorted(predictor) and report["num_classes"] is None
    assert set(_load(out)) == set(removed)

    partial = dict(removed, **{"roi_heads.box_predictor.cls_score.weight": tiny_sources["defrcn"][
        "roi_heads.box_predictor.cls_score.weight"]})
    out2 = tmp_path / "partial.ckpt"
    with pytest.raises(ConversionError) as info:
        convert_defrcn_checkpoint(_write(tmp_path, "defrcn", partial), out2, "defrcn", depth=TINY)
    for key in predictor:
        if key != "roi_heads.box_predictor.cls_score.weight":
            assert f"missing model parameter: {key} " in str(info.value)
    assert not out2.exists()


def test_explicit_num_classes_must_match_the_predictor(tmp_path, tiny_sources):
    out = tmp_path / "model.ckpt"
    with pytest.raises(ConversionError, match=r"shape mismatch: roi_heads\.box_predictor\.cls_score\.weight "
                                              r"source \(6, 2048\) vs model .* \(21, 2048\)"):
        convert_defrcn_checkpoint(_write(tmp_path, "defrcn", tiny_sources["defrcn"]), out, "defrcn",
                                  num_classes=20, depth=TINY)
    assert not out.exists()


def test_unknown_kind_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match="unknown source kind"):
        convert_defrcn_checkpoint(tmp_path / "x.pth", tmp_path / "y.ckpt", "detr")
    with pytest.raises(ConversionError, match="source not found"):
        convert_defrcn_checkpoint(tmp_path / "absent.pkl", tmp_path / "y.ckpt", "resnet_c2")


def test_cli_converts_torchvision_resnet50_and_refuses_with_exit_1(tmp_path):
    state = _torchvision_source(_pcb_shapes(R50))
    root = Path(__file__).resolve().parents[1]

    def cli(source, output):
        return subprocess.run([sys.executable, str(root / "tools" / "convert_weights.py"), "--model",
                               "resnet_torchvision", "--depth", "50", "--source", str(source), "--output",
                               str(output)], cwd=root, capture_output=True, text=True, timeout=300)

    out = tmp_path / "pcb_r50.ckpt"
    done = cli(_save_pth(tmp_path / "resnet50.pth", state, wrap=False), out)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and "53 source keys dropped" in done.stdout
    params = _load(out)
    assert set(params) == {"net." + k for k in state if not k.endswith("num_batches_tracked")}
    np.testing.assert_array_equal(params["net.layer3.5.bn2.weight"], state["layer3.5.bn2.weight"].numpy())

    bad = dict(state, **{"layer5.0.conv1.weight": torch.zeros(4)})
    del bad["fc.bias"]
    out_bad = tmp_path / "bad.ckpt"
    refused = cli(_save_pth(tmp_path / "bad.pth", bad, wrap=False), out_bad)
    assert refused.returncode == 1
    assert "unmapped source key: layer5.0.conv1.weight" in refused.stderr
    assert "missing model parameter: net.fc.bias " in refused.stderr
    assert not out_bad.exists() and _leftovers(tmp_path, out_bad) == []
