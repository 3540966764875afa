"""Focus-DETR with a Swin backbone: built from the configs, detrex parameter names, graph-mode forward on real
coco_tiny images through the inference wrapper (Swin-T trunk, tiny transformer)."""

from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.config import load_config
from src.models import build_model
from src.models.focus_detr.backbone import build_backbone
from tests.test_focus_detr_dn import _coco_tiny_batch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "focus_detr"
PAD_HW = (64, 96)


@pytest.mark.parametrize("config, channels, window, drop_path", [
    ("focus_detr_swin_base_384_4scale_36ep.yaml", (256, 512, 1024), 12, 0.2),
    ("focus_detr_swin_large_384_4scale_36ep.yaml", (384, 768, 1536), 12, 0.2),
])
def test_swin_384_configs_build_their_backbones(config, channels, window, drop_path):
    # detrex focus_detr_swin_{base,large}_384.py: embed 128 / 192, window 12, out_indices (1, 2, 3); stochastic
    # depth is detectron2's default 0.2 there (the Swin-T config sets 0.1).
    backbone, out_channels = build_backbone(load_config(CONFIGS / config)["model"]["backbone"])
    assert out_channels == channels
    assert backbone.layers[0].window_size == window
    np.testing.assert_allclose(backbone.layers[3].blocks[1].drop_path.drop_prob, drop_path)


def test_tiny_swin_t_focus_detr_runs_forward_on_real_images(shared_data):
    ms.set_seed(0)
    cfg = load_config(CONFIGS / "focus_detr_tiny.yaml", ["model.backbone=swin_t", "model.num_queries=10"])
    detector = build_model(cfg)
    network = detector.network
    names = {p.name: tuple(p.shape) for p in network.get_parameters()}
    # The detrex Swin-T keys, unchanged (detectron2 SwinTransformer, out_indices (1, 2, 3)).
    assert names["backbone.layers.2.blocks.5.attn.qkv.weight"] == (1152, 384)
    assert names["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == (169, 3)
    assert {"backbone.norm1.weight", "backbone.norm2.weight", "backbone.norm3.weight"} <= set(names)
    assert "backbone.norm0.weight" not in names
    assert names["neck.convs.0.conv.weight"] == (32, 192, 1, 1)
    assert names["neck.extra_convs.0.conv.weight"] == (32, 768, 3, 3)
    np.testing.assert_allclose(network.backbone.layers[3].blocks[1].drop_path.drop_prob, 0.1)
    # The tiny config freezes the backbone (train_backbone: false); the transformer trains.
    assert not any(p.requires_grad for p in network.get_parameters() if p.name.startswith("backbone."))
    assert all(p.requires_grad for p in network.get_parameters() if p.name.startswith("transformer."))

    image, mask = _coco_tiny_batch(shared_data / "coco_tiny", PAD_HW)[:2]
    detector.network.set_train(False)
    feats = network.backbone(image)
    levels = [(-(-PAD_HW[0] // s), -(-PAD_HW[1] // s)) for s in (8, 16, 32, 64)]
    assert [tuple(f.shape) for f in feats] == [(2, c, h, w) for c, (h, w) in zip((192, 384, 768), levels)]
    logits, boxes, enc_logits, enc_boxes, fg_logits, mask_flatten = detector.network(image, mask)
    assert logits.shape == (2, 2, 10, 80) and boxes.shape == (2, 2, 10, 4)
    assert enc_logits.shape == (2, 10, 80) and enc_boxes.shape == (2, 10, 4)
    assert fg_logits.shape == (2, sum(h * w for h, w in levels)) == mask_flatten.shape
    for out in (logits, boxes, enc_logits, enc_boxes, fg_logits):
        assert np.isfinite(out.asnumpy()).all()
    assert boxes.asnumpy().min() >= 0.0 and boxes.asnumpy().max() <= 1.0
    assert not np.allclose(logits.asnumpy()[-1, 0], logits.asnumpy()[-1, 1])
    scores, labels, _ = detector.postprocess(logits, boxes, enc_logits, enc_boxes, fg_logits, mask_flatten,
                                             ms.Tensor(np.array([[480, 640], [427, 640]], np.float32)))
    assert scores.shape == (2, cfg["model"]["num_select"]) and np.isfinite(scores.asnumpy()).all()
    assert labels.asnumpy().min() >= 1
