"""DETR attention maps: our graph's attention weights equal transformers' DETR ``output_attentions`` with the same
converted weights, on a real image; the figures are written.

The reference is a tiny transformers ``DetrForObjectDetection`` (hidden 32, 2 heads, 1 encoder and 2 decoder layers,
20 queries: ``configs/detr/detr_tiny.yaml``'s model) on the random-weight ResNet-50 backbone built as in
``tests/test_detr_parity.py`` (frozen BN statistics calibrated on the image; its q/k projections scaled by 4 so the
attention is not nearly uniform), with eager attention so it returns its attention weights. Both run on a real
coco_tiny image as ``infer.py`` prepares it (eval resize, padded to the eval bucket with a padding mask), and the
figures test reuses the same compiled graph.
"""

import json

import cv2
import mindspore as ms
import numpy as np
import pytest

from src.config import load_config
from src.data.catalog import resolve_num_classes
from src.data.dataset import BatchPadder
from src.data.transforms import build_eval_transform
from src.models.detr.attention_maps import DetrAttentionNet, parse_point, run_attention, write_attention_figures
from src.models.detr.convert import convert_detr_checkpoint
from src.models.detr.model import build_detr
from src.models.detr.postprocess import PostProcess
from tests.test_detr_parity import CONFIGS, _calibrate_frozen_bn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, shared_data):
    """HF reference, our DetrAttentionNet with its converted weights, and a real image as infer.py feeds it."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    cfg = resolve_num_classes(load_config(CONFIGS / "detr_tiny.yaml"))
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    path = sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    # The eval transform and the eval bucket, as run_attention does: 480x640 -> 120x160, padded to 160x160.
    image, _, _ = build_eval_transform(cfg["data"])(rgb, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), None)
    batch = BatchPadder(cfg["data"]["eval_pad_buckets"], max_boxes=1)(
        [image], [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int32)], [0], [np.array(rgb.shape[:2])],
        [np.array(image.shape[1:])])
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
    _calibrate_frozen_bn(reference, torch.from_numpy(batch[0]))
    with torch.no_grad():  # HF's small init leaves attention nearly uniform; sharpen it so errors show
        for name, param in reference.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(4.0)
    root = tmp_path_factory.mktemp("attention")
    reference.save_pretrained(root / "hf")
    convert_detr_checkpoint(root / "hf", root / "tiny.ckpt", model_cfg)
    ours = build_detr(**model_cfg)
    ms.load_param_into_net(ours, ms.load_checkpoint(str(root / "tiny.ckpt")), strict_load=True)
    return {"reference": reference, "net": DetrAttentionNet(ours, PostProcess()), "image": batch[0],
            "mask": batch[1], "rgb": rgb, "stem": path.stem, "data_cfg": cfg["data"]}


def test_attention_weights_equal_transformers(tiny_pair):
    image, mask = tiny_pair["image"], tiny_pair["mask"]
    assert mask.any()  # the padded rows are masked keys on both sides
    with torch.no_grad():
        expected = tiny_pair["reference"](torch.from_numpy(image), pixel_mask=torch.from_numpy(~mask).long(),
                                          output_attentions=True)
    outputs = tiny_pair["net"](ms.Tensor(image), ms.Tensor(mask), ms.Tensor(np.array([[480, 640]], np.int32)))
    feature_mask, encoder, decoder = (o.asnumpy() for o in outputs[3:])
    cross = expected.cross_attentions[-1].numpy()  # [1, heads, Q, h*w]
    assert decoder.shape == cross.shape == (1, 2, 20, feature_mask[0].size)
    assert cross.std() > 0.1 * cross.mean()  # weights that vary across the image, not a uniform spread
    np.testing.assert_allclose(decoder, cross, atol=1e-4, rtol=0)
    np.testing.assert_allclose(encoder, expected.encoder_attentions[-1].numpy(), atol=1e-4, rtol=0)


def test_attention_figures_are_written(tiny_pair, tmp_path):
    net, rgb, stem, data_cfg = tiny_pair["net"], tiny_pair["rgb"], tiny_pair["stem"], tiny_pair["data_cfg"]
    result = run_attention(net, rgb, data_cfg)
    hv, wv = result["decoder"].shape[1:]
    assert (hv, wv) == (4, 5) and result["encoder"].shape == (hv * wv, hv, wv)
    np.testing.assert_allclose(result["decoder"].sum(axis=(1, 2)), 1.0, atol=1e-5)  # padding cells hold nothing
    written = write_attention_figures(net, rgb, data_cfg, tmp_path, stem, score_threshold=0.0,
                                      points=[parse_point("100,80"), parse_point("500,300")])
    assert [p.name for p in written] == [f"{stem}_decoder_attention.png", f"{stem}_encoder_attention.png"]
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
