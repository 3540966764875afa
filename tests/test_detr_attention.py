"""DETR attention maps: our graph's attention weights equal transformers' DETR ``output_attentions`` with the same
converted weights, on a real image; the figures are written.

The reference is a tiny transformers ``DetrForObjectDetection`` (hidden 32, 2 heads, 1 encoder and 2 decoder layers,
20 queries: ``configs/detr/detr_tiny.yaml``'s model) on the random-weight ResNet-50 backbone built as in
``tests/test_detr_parity.py`` (frozen BN statistics calibrated on the image), with eager attention so it returns
its attention weights.
"""

import json

import cv2
import mindspore as ms
import numpy as np
import pytest

from src.config import load_config
from src.models.detr.attention_maps import DetrAttentionNet, parse_point, run_attention, write_attention_figures
from src.models.detr.convert import convert_detr_checkpoint
from src.models.detr.detr import build_detr
from src.models.detr.postprocess import PostProcess
from tests.test_detr_parity import CONFIGS, _calibrate_frozen_bn, _load_image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, shared_data):
    """(HF reference model, our DETR with its converted weights, the image as float32 [1, 3, H, W])."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    model_cfg = {k: v for k, v in load_config(CONFIGS / "detr_tiny.yaml")["model"].items() if k != "name"}
    torch.manual_seed(0)
    backbone_cfg = ResNetConfig(out_features=["stage4"], downsample_in_bottleneck=False,
                                downsample_in_first_stage=False)
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone_cfg,
                        num_labels=91, auxiliary_loss=False, d_model=model_cfg["hidden_dim"],
                        encoder_layers=model_cfg["enc_layers"], decoder_layers=model_cfg["dec_layers"],
                        encoder_attention_heads=model_cfg["nheads"], decoder_attention_heads=model_cfg["nheads"],
                        encoder_ffn_dim=model_cfg["dim_feedforward"], decoder_ffn_dim=model_cfg["dim_feedforward"],
                        num_queries=model_cfg["num_queries"])
    config._attn_implementation = "eager"  # sdpa returns no weights
    reference = DetrForObjectDetection(config).eval()
    image = _load_image(shared_data, short_side=160)
    _calibrate_frozen_bn(reference, torch.from_numpy(image))
    with torch.no_grad():  # HF's small init leaves attention nearly uniform; sharpen it so errors show
        for name, param in reference.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(4.0)
    root = tmp_path_factory.mktemp("attention")
    reference.save_pretrained(root / "hf")
    convert_detr_checkpoint(root / "hf", root / "tiny.ckpt", model_cfg)
    ours = build_detr(**model_cfg)
    ms.load_param_into_net(ours, ms.load_checkpoint(str(root / "tiny.ckpt")), strict_load=True)
    ours.set_train(False)
    return reference, ours, image


def test_attention_weights_equal_transformers(tiny_pair):
    reference, ours, image = tiny_pair
    with torch.no_grad():
        expected = reference(torch.from_numpy(image), output_attentions=True)
    mask = np.zeros((1,) + image.shape[2:], bool)
    net = DetrAttentionNet(ours, PostProcess())
    outputs = net(ms.Tensor(image), ms.Tensor(mask), ms.Tensor(np.array([image.shape[2:]], np.int32)))
    feature_mask, encoder, decoder = (o.asnumpy() for o in outputs[3:])
    cross = expected.cross_attentions[-1].numpy()  # [1, heads, Q, h*w]
    assert decoder.shape == cross.shape == (1, 2, 20, feature_mask[0].size)
    assert cross.std() > 0.1 * cross.mean()  # weights that vary across the image, not a uniform spread
    np.testing.assert_allclose(decoder, cross, atol=1e-4, rtol=0)
    np.testing.assert_allclose(encoder, expected.encoder_attentions[-1].numpy(), atol=1e-4, rtol=0)


def test_attention_figures_are_written(tiny_pair, shared_data, tmp_path):
    _, ours, _ = tiny_pair
    path = sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    data_cfg = load_config(CONFIGS / "detr_tiny.yaml")["data"]
    net = DetrAttentionNet(ours, PostProcess())
    result = run_attention(net, rgb, data_cfg)
    hv, wv = result["decoder"].shape[1:]
    assert result["encoder"].shape == (hv * wv, hv, wv)
    np.testing.assert_allclose(result["decoder"].sum(axis=(1, 2)), 1.0, atol=1e-5)  # no padding cells left out
    written = write_attention_figures(net, rgb, data_cfg, tmp_path, path.stem, score_threshold=0.0,
                                      points=[parse_point("100,80"), parse_point("500,300")])
    assert [p.name for p in written] == [f"{path.stem}_decoder_attention.png", f"{path.stem}_encoder_attention.png"]
    for figure in written:
        picture = cv2.imread(str(figure))
        assert picture is not None and picture.shape[0] > 200 and picture.std() > 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary left
    with pytest.raises(ValueError, match="outside"):
        write_attention_figures(net, rgb, data_cfg, tmp_path, "bad", 0.0, points=[(rgb.shape[1] + 5, 3)])
    assert not list(tmp_path.glob("bad*"))
    with pytest.raises(ValueError, match="X,Y"):
        parse_point("12")
    assert json.dumps(parse_point("1.5,2")) == "[1.5, 2.0]"
