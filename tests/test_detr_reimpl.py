"""csm-kr/detr_pytorch checkpoints: converted weights give that repository's outputs on a real image.

How the fixture ``tests/fixtures/detr_reimpl/`` was produced (csm-kr/detr_pytorch at commit 747e382, run outside
this repository with torch 2.13 CPU and torchvision 0.29.1, from a checkout of that commit with this worktree on
``PYTHONPATH``):

* shims, imports and devices only: ``sys.modules["torchvision._meta_registrations"]`` replaced by an empty module
  (the torchvision wheel's compiled ops do not load against this torch; ResNet needs none), and
  ``models.model.resnet50`` replaced by ``torchvision.models.resnet50(weights=None, norm_layer=...)`` (torchvision
  0.29 has no ``pretrained`` argument and there is no download); the model stays on the CPU (its ``build_model``
  calls ``.cuda()``, so ``models.model.DETR(num_classes=91, num_queries=100, d_model=256)`` was built directly);
* every tensor of its ``state_dict()`` was set to :func:`fill_tensor` ``(name, shape, SEED)`` and the model saved
  as its ``test.py`` saves ``*.best.pth.tar``: ``torch.save({"epoch": ..., "model_state_dict": ...})``;
  ``state_dict_keys.json`` lists the names and shapes, in order, so this test rebuilds the same file without
  that code;
* the image ``IMAGE_NAME`` of coco_tiny val2017 went through its test transform (``datasets/transforms_.py``:
  ``RandomResize([800], max_size=1333)``, ``Resize((1024, 1024))``, ``ToTensor``, ``Normalize``) and its
  ``DETR.forward`` in ``eval()`` mode; ``outputs.npz`` holds ``pred_logits`` [1, 100, 92] of the last decoder
  layer, ``pred_boxes`` [6, 1, 100, 4] of all six layers (cxcywh, normalized) and the network input at the
  pixels :func:`sample_positions` picks (``pixels`` [3, 4096]).
"""

import json
import zlib
from pathlib import Path

import cv2
import mindspore as ms
import numpy as np
import pytest

from src.config import load_config
from src.data.catalog import resolve_num_classes
from src.data.transforms import build_eval_transform
from src.models.detr.convert import is_reimpl_layout, reimpl_to_hub
from src.models.detr.model import build_detr
from tools.convert_weights import main as convert_main

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "detr_reimpl"
CONFIG = ROOT / "configs" / "detr" / "detr_r50_1024_mosaic.yaml"
IMAGE_NAME = "000000005001.jpg"
SEED = 14


def fill_tensor(name: str, shape: tuple, seed: int) -> np.ndarray:
    """Deterministic float32 values for the state-dict entry ``name``, from a generator seeded by (seed, name).

    Kept well conditioned so a 50-layer random ResNet and the transformer give outputs worth comparing:
    BatchNorm variances in [0.5, 1.5]; other vectors 1 + 0.1 N (weights) or 0.1 N (biases, means); matrices and
    convolutions N(0, 1 / fan_in).
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) == 1:
        return ((1.0 if name.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def sample_positions(count: int = 4096, size: int = 1024) -> np.ndarray:
    """``count`` fixed (y, x) pixel positions of a ``size`` square image, int64 [count, 2]."""
    return np.random.default_rng(0).integers(0, size, (count, 2))


@pytest.fixture(scope="module")
def reimpl_checkpoint(tmp_path_factory):
    """The fixture's ``.pth.tar``, rebuilt from the key list and :func:`fill_tensor`."""
    keys = json.loads((FIXTURE / "state_dict_keys.json").read_text())
    state = {name: torch.from_numpy(fill_tensor(name, tuple(shape), SEED)) for name, shape in keys}
    path = tmp_path_factory.mktemp("reimpl") / "detr_coco.best.pth.tar"
    torch.save({"epoch": 0, "model_state_dict": state}, path)
    return path


def test_reimpl_names_map_onto_detr_and_packs_qkv():
    keys = json.loads((FIXTURE / "state_dict_keys.json").read_text())
    state = {f"module.{name}": np.zeros(shape, np.float32) for name, shape in keys}
    assert is_reimpl_layout(state)
    hub, unmapped = reimpl_to_hub(state)
    assert unmapped == []
    assert hub["transformer.decoder.layers.5.multihead_attn.in_proj_weight"].shape == (768, 256)
    assert hub["backbone.0.body.layer4.2.bn3.running_var"].shape == (2048,)
    assert hub["bbox_embed.layers.2.weight"].shape == (4, 256)
    broken = {k: v for k, v in state.items() if not k.endswith("encoders.3.attn.k.weight")}
    assert "transformer.encoder.layers.3.self_attn.in_proj_weight (q/k/v projections incomplete: only ['q', 'v'])" \
        in reimpl_to_hub(broken)[1]


def test_converted_checkpoint_reproduces_reimpl_outputs(reimpl_checkpoint, shared_data, tmp_path):
    output = tmp_path / "detr_1024.ckpt"
    assert convert_main(["--model", "detr_reimpl", "--source", str(reimpl_checkpoint), "--output", str(output)]) == 0
    cfg = resolve_num_classes(load_config(CONFIG))
    expected = np.load(FIXTURE / "outputs.npz")
    rgb = cv2.cvtColor(cv2.imread(str(shared_data / "coco_tiny" / "val2017" / IMAGE_NAME)), cv2.COLOR_BGR2RGB)
    image, _, _ = build_eval_transform(cfg["data"])(rgb, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), None)
    pos = sample_positions()
    # Our fixed-1024 eval transform feeds the network the pixels the re-implementation's test transform does.
    np.testing.assert_allclose(image[:, pos[:, 0], pos[:, 1]], expected["pixels"], atol=1e-5)

    # One forward of the full R50 at 1024x1024: PyNative skips a graph compilation that would cost more than it.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = build_detr(**{k: v for k, v in cfg["model"].items() if k != "name"})
    ms.load_param_into_net(model, ms.load_checkpoint(str(output)), strict_load=True)
    model.set_train(False)
    logits, boxes = model(ms.Tensor(image[None]), ms.Tensor(np.zeros((1, 1024, 1024), np.bool_)))
    assert float(np.std(expected["pred_logits"])) > 0.1  # random weights, yet outputs that say something
    np.testing.assert_allclose(logits.asnumpy()[-1], expected["pred_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(boxes.asnumpy(), expected["pred_boxes"], atol=1e-4, rtol=1e-4)
