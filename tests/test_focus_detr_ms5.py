"""The MindSpore model zoo's 5-scale Focus-DETR checkpoint: converted, our model gives the port's own outputs.

How the fixture ``tests/fixtures/focus_detr_ms5/`` was produced (the port's code is not in this repository):

1. linxid/Focus-DETR-mindspore at commit 1610f230aab72d59ec10dfe54f5bb1815d2154e1 (the model zoo's
   ``research/cv/Focus-DETR`` without its two lint regressions), extracted outside the repository and run with
   MindSpore 2.10 in PyNative mode on CPU. Patched only where it cannot run on MindSpore 2.x, each a pure API
   rename with the same semantics: ``ops.meshgrid((a, b), ...)`` -> ``ops.meshgrid(a, b, ...)`` (3 places);
   ``ops.split(z, output_num=2, axis=-1)`` -> ``ops.split(z, z.shape[-1] // 2, axis=-1)``;
   ``ops.interpolate(..., sizes=..., coordinate_transformation_mode="half_pixel")`` -> ``size=...,
   align_corners=False``; ``ops.grid_sample(interpolation_mode=...)`` -> ``mode=...`` (2 places);
   ``enc_outputs_class_unselected.max(-1)`` -> ``.max(-1)[0]`` (``Tensor.max`` now returns (values, indices));
   and an empty stand-in module for the CUDA extension ``MultiScaleDeformableAttention`` that
   ``functions/ms_deform_attn_func.py`` imports but the pure-MindSpore path never calls.
2. The network was built by its own ``build_focus_detr`` from ``config/Focus_DETR/Focus_DETR_5scale.py`` (+
   ``coco_transformer.py``) with the options of its ``scripts/run_eval.sh`` and, to keep the test small,
   ``enc_layers=2, dec_layers=2, dim_feedforward=256, num_queries=100`` (the backbone is a fixed ResNet-50 and the
   width a fixed 256 in its code). Every parameter was set to :func:`port_weight` of its name and shape.
   ``port_params.json`` lists the port's parameter names and shapes in its own order; ``port_outputs.npz`` holds
   its ``pred_logits [1, 100, 91]`` and ``pred_boxes [1, 100, 4]`` for coco_tiny ``val2017/000000005001.jpg``
   (480x640) resized by our eval transform to 224x298 (short side 224, long side at most 320, ImageNet
   normalization), batch 1, all-False mask.

The tests rebuild that checkpoint (the 130 MB file is not committed: its values are :func:`port_weight` of the
listed names), convert it with ``tools/convert_weights.py --model focus_detr_ms5`` and compare; the last test runs
the published README's ``scripts/DINO_eval_ms_coco.sh COCODIR CKPT`` on that checkpoint.
"""

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint import load_pretrained
from src.config import family_defaults, load_config
from src.convert_common import ConversionError, cell_param_shapes
from src.data.transforms import build_eval_transform
from src.evaluation.predict import load_image
from src.models import build_model
from src.models.focus_detr.convert_ms5 import map_ms5_state
from tools.convert_weights import main as convert_main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "focus_detr_ms5"
CONFIG = ROOT / "configs" / "focus_detr" / "focus_detr_r50_5scale_mindspore_zoo.yaml"
# The port's network size used for the fixture (see the module docstring); our model takes the same via --set.
SMALL = ["model.enc_layers=2", "model.dec_layers=2", "model.feedforward_dim=256", "model.num_queries=100",
         "model.dn_number=0"]
IMAGE = "coco_tiny/val2017/000000005001.jpg"  # the first image eval.py --max_images 1 reads
EVAL_SIZE = {**family_defaults("focus_detr")["data"], "eval_size": 224, "eval_max_size": 320}


def port_weight(name: str, shape) -> np.ndarray:
    """The value given to the port's parameter ``name``: float32 random numbers seeded by ``crc32(name)``.

    BatchNorm statistics near (0, 1), residual-branch ``bn3``/shortcut scales in [0, 0.3) so a 50-layer random
    ResNet stays finite, ``alpha`` in [0.2, 0.6) so the top-down scoring matters, embeddings N(0, 1), biases
    N(0, 0.1), weights N(0, 1 / fan_in).
    """
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "moving_mean":
        values = rng.normal(0.0, 0.1, shape)
    elif leaf == "moving_variance":
        values = rng.uniform(0.5, 1.5, shape)
    elif leaf == "gamma":
        residual = ".bn3." in name or name.endswith("down_sample_layer.1.gamma")
        values = rng.uniform(0.0, 0.3, shape) if residual else rng.uniform(0.5, 1.0, shape)
    elif leaf in ("beta", "bias"):
        values = rng.normal(0.0, 0.1, shape)
    elif leaf == "alpha":
        values = rng.uniform(0.2, 0.6, shape)
    elif leaf in ("level_embed", "embedding_table"):
        values = rng.normal(0.0, 1.0, shape)
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
    return values.astype(np.float32)


def port_state() -> dict:
    """The port's checkpoint contents: its parameter names (in its order) -> :func:`port_weight`."""
    entries = json.loads((FIXTURES / "port_params.json").read_text())
    return {name: port_weight(name, tuple(shape)) for name, shape in entries}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The port-named checkpoint written to disk and converted through the CLI into the small 5-scale model."""
    folder = tmp_path_factory.mktemp("ms5")
    source = folder / "focus_detr_ms5_port.ckpt"
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in port_state().items()], str(source))
    output = folder / "converted.ckpt"
    assert convert_main(["--model", "focus_detr_ms5", "--source", str(source), "--output", str(output),
                         "--config", str(CONFIG), *[arg for item in SMALL for arg in ("--set", item)]]) == 0
    return {"source": source, "output": output}


@pytest.fixture(scope="module")
def detector():
    """Our small 5-scale model-zoo Focus-DETR (random init), built once for the tests of this module."""
    return build_model(load_config(CONFIG, SMALL))


def test_converted_port_checkpoint_gives_the_ports_outputs_on_a_real_image(converted, detector, shared_data):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    load_pretrained(converted["output"], detector.network, strict=True)
    detector.network.set_train(False)
    image, _, _ = build_eval_transform(EVAL_SIZE)(load_image(shared_data / IMAGE), np.zeros((0, 4), np.float32),
                                                  np.zeros(0, np.int32), None)
    assert image.shape == (3, 224, 298)
    mask = np.zeros((1, 224, 298), bool)
    outputs = detector.network(ms.Tensor(image[None]), ms.Tensor(mask))
    expected = np.load(FIXTURES / "port_outputs.npz")
    np.testing.assert_allclose(outputs[0][-1].asnumpy(), expected["pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs[1][-1].asnumpy(), expected["pred_boxes"], rtol=0, atol=1e-4)


def test_converter_refuses_unshared_heads_and_unknown_keys(detector):
    shapes = cell_param_shapes(detector.network)
    state = port_state()
    params, report = map_ms5_state(state, shapes)
    assert set(params) == set(shapes)
    assert list(report["filled"]) == ["label_enc.embedding_table"]
    np.testing.assert_array_equal(params["class_embed.1.weight"], state["class_embed.0.weight"])
    np.testing.assert_array_equal(params["class_embed.2.weight"], state["enc_out_class_embed.weight"])
    qkv = [state[f"transformer.decoder.layers.1.self_attn.dense{i}.weight"] for i in (1, 2, 3)]
    np.testing.assert_array_equal(params["transformer.decoder.layers.1.attentions.0.attn.in_proj_weight"],
                                  np.concatenate(qkv))

    bad = dict(state)
    bad["class_embed.1.weight"] = state["class_embed.0.weight"] + 1.0
    bad["transformer.encoder.layers.0.mystery.weight"] = np.zeros(3, np.float32)
    del bad["transformer.decoder.layers.0.self_attn.dense2.bias"]
    with pytest.raises(ConversionError) as err:
        map_ms5_state(bad, shapes)
    message = str(err.value)
    assert "decoder heads are not shared: class_embed.1.weight differs from class_embed.0.weight" in message
    assert "unmapped source key: transformer.encoder.layers.0.mystery.weight" in message
    assert "incomplete self-attention projections of transformer.decoder.layers.0" in message


def test_dino_eval_script_detects_converts_and_evaluates_the_port_checkpoint(converted, shared_data, tmp_path):
    # The published README's command with the port's checkpoint and no config: the format is read from its keys.
    source = tmp_path / "best_ckpt.ckpt"
    source.symlink_to(converted["source"])
    sizes = ["data.eval_size=224", "data.eval_max_size=320", "data.eval_pad_buckets=[[224, 298]]"]  # no padding
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env.pop("DEVICE_TARGET", None)
    proc = subprocess.run(["bash", "scripts/DINO_eval_ms_coco.sh", str(shared_data / "coco_tiny"), str(source),
                           "--max_images", "1", "--output_dir", str(tmp_path / "eval"), "--set", *SMALL, *sizes],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "MindSpore model zoo 5-scale Focus-DETR checkpoint detected" in out
    assert (tmp_path / "best_ckpt_converted.ckpt").is_file()
    assert len([line for line in out.splitlines() if "Average Precision" in line or "Average Recall" in line]) == 12
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 1
    saved = load_config(tmp_path / "eval" / "config.yaml")
    assert saved["model"]["fts_modulation"] == "weighted_memory" and saved["model"]["num_classes"] == 91
    # Graph-mode detections equal the port's: its post_process (sigmoid, top 300 of Q x 91, label = category id)
    # applied to its outputs, boxes scaled to the 640x480 image and clipped, as detrex's detector_postprocess.
    results = json.loads(next((tmp_path / "eval").glob("*results*.json")).read_text())
    assert {r["image_id"] for r in results} == {5001}
    expected = _port_detections(width=640.0, height=480.0)
    for r in results:
        x, y, w, h = r["bbox"]
        same = ((expected["labels"] == r["category_id"]) & (np.abs(expected["scores"] - r["score"]) < 1e-4)
                & (np.abs(expected["boxes"] - [x, y, x + w, y + h]).max(axis=1) < 0.05))
        assert same.any(), r
    assert len(results) >= 200


def _port_detections(width: float, height: float) -> dict:
    """The port's ``coco_eval.post_process`` on its fixture outputs, written here in NumPy, plus clipping."""
    outputs = np.load(FIXTURES / "port_outputs.npz")
    prob = 1.0 / (1.0 + np.exp(-outputs["pred_logits"][0].astype(np.float64)))
    flat = prob.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:300]
    cx, cy, w, h = outputs["pred_boxes"][0][order // prob.shape[1]].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * [width, height, width, height]
    boxes = np.clip(boxes, 0.0, [width, height, width, height])
    return {"scores": flat[order], "labels": order % prob.shape[1], "boxes": boxes}
