"""DETR port vs the PyTorch reference (transformers' DetrForObjectDetection), and the weight converter.

The reference is built with random weights and no download: an HF ResNet-50 backbone laid out like torchvision
v1.5 (``downsample_in_bottleneck=False`` puts the stride on the 3x3 conv), frozen BN with eps 1e-5. Its frozen
BN statistics are set from the activations of the test image so the random network stays well conditioned
(otherwise a 50-layer random ResNet's activations explode and the comparison says nothing).
"""

import re
from pathlib import Path

import cv2
import mindspore as ms
import numpy as np
import pytest

from src.config import load_config
from src.data.catalog import resolve_num_classes
from src.layers.position_encoding import PositionEmbeddingSine
from src.models.detr.convert import ConversionError, convert_detr_checkpoint, infer_backbone
from src.models.detr.model import build_detr
from src.models.detr.postprocess import PostProcess
from src.models.detr.transformer import Transformer
from src.runtime import prefer_avx2_cpu_kernels
from tools.convert_weights import main as convert_main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detr"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _model_cfg(name):
    cfg = resolve_num_classes(load_config(CONFIGS / name))["model"]
    return {k: v for k, v in cfg.items() if k != "name"}


def _load_image(shared_data, short_side=384):
    """First coco_tiny val image, RGB, short side resized, ImageNet-normalized: float32 [1, 3, H, W]."""
    path = sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[0]
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    scale = short_side / min(h, w)
    rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    return ((rgb.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None].copy()


def _calibrate_frozen_bn(model, pixel_values, seed=0):
    """Give every frozen BN random affine params and statistics taken from its input on this image."""
    gen = torch.Generator().manual_seed(seed)
    bn_cls = transformers.models.detr.modeling_detr.DetrFrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0]
        n = x.shape[1]
        module.running_mean.copy_(x.mean((0, 2, 3)) + 0.1 * torch.randn(n, generator=gen))
        module.running_var.copy_(x.var((0, 2, 3)) * (0.5 + torch.rand(n, generator=gen)))
        module.weight.copy_(0.5 + torch.rand(n, generator=gen))
        module.bias.copy_(0.2 * torch.randn(n, generator=gen))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, bn_cls)]
    assert len(hooks) == 53  # ResNet-50: stem + 16 blocks * 3 + 4 downsample
    with torch.no_grad():
        model(pixel_values)
    for hook in hooks:
        hook.remove()


def _hf_backbone_to_torchvision(key):
    """HF-native ResNet name (after the backbone prefix) -> torchvision name. The test's own mapping."""
    key = key.replace("embedder.embedder.convolution.", "conv1.").replace("embedder.embedder.normalization.", "bn1.")
    m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", key)
    if not m:
        return key
    stage, block, rest = int(m[1]), m[2], m[3]
    rest = re.sub(r"layer\.(\d)\.convolution", lambda g: f"conv{int(g[1]) + 1}", rest)
    rest = re.sub(r"layer\.(\d)\.normalization", lambda g: f"bn{int(g[1]) + 1}", rest)
    rest = rest.replace("shortcut.convolution", "downsample.0").replace("shortcut.normalization", "downsample.1")
    return f"layer{stage + 1}.{block}.{rest}"


def _hf_to_hub_state_dict(hf_sd):
    """HF DETR (save_pretrained names) -> official torch-hub names, written out rule by rule for the test."""
    hub, qkv = {}, {}
    for key, value in hf_sd.items():
        if key.startswith("model.backbone.conv_encoder.model."):
            hub["backbone.0.body." + _hf_backbone_to_torchvision(key.split("conv_encoder.model.", 1)[1])] = value
            continue
        new = (key.replace("model.input_projection.", "input_proj.")
               .replace("model.query_position_embeddings.", "query_embed.")
               .replace("class_labels_classifier.", "class_embed.")
               .replace("bbox_predictor.", "bbox_embed.")
               .replace("model.decoder.layernorm.", "transformer.decoder.norm.")
               .replace("model.encoder.layers.", "transformer.encoder.layers.")
               .replace("model.decoder.layers.", "transformer.decoder.layers."))
        new = new.replace(".encoder_attn.", ".multihead_attn.").replace(".fc1.", ".linear1.")
        new = new.replace(".fc2.", ".linear2.").replace(".self_attn_layer_norm.", ".norm1.")
        new = new.replace(".encoder_attn_layer_norm.", ".norm2.").replace(".multihead_attn_layer_norm.", ".norm2.")
        if ".final_layer_norm." in new:
            new = new.replace(".final_layer_norm.", ".norm3." if "decoder" in new else ".norm2.")
        m = re.match(r"(.*)\.(q|k|v)_proj\.(weight|bias)$", new)
        if m:
            qkv.setdefault(f"{m[1]}.in_proj_{m[3]}", {})[m[2]] = value
            continue
        hub[new] = value
    for key, parts in qkv.items():
        hub[key] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return hub


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data):
    """Random HF DETR-R50 saved with save_pretrained, its torch-hub twin, and reference outputs per layer."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(0)
    backbone_cfg = ResNetConfig(out_features=["stage4"], downsample_in_bottleneck=False,
                                downsample_in_first_stage=False)
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone_cfg,
                        num_labels=91, auxiliary_loss=False)
    model = DetrForObjectDetection(config).eval()
    image = _load_image(shared_data)
    pixel_values = torch.from_numpy(image)
    _calibrate_frozen_bn(model, pixel_values)
    with torch.no_grad():
        # HF's small head init leaves every box near 0.5; spread them so box errors are visible.
        model.bbox_predictor.layers[2].weight.mul_(300.0)

    root = tmp_path_factory.mktemp("detr_ref")
    model.save_pretrained(root / "hf")
    hf_sd = {k: v.clone() for k, v in model.state_dict().items()}
    from safetensors.torch import load_file

    saved_sd = load_file(str(root / "hf" / "model.safetensors"))
    hub_path = root / "hub.pth"
    torch.save({"model": _hf_to_hub_state_dict(saved_sd)}, hub_path)

    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        # One entry per decoder layer output, plus the decoder input first.
        layers = out.decoder_hidden_states[1:]
        normed = torch.stack([model.model.decoder.layernorm(h) for h in layers])
        logits = model.class_labels_classifier(normed).numpy()
        boxes = model.bbox_predictor(normed).sigmoid().numpy()
    assert len(layers) == config.decoder_layers
    assert logits.std() > 0.1 and boxes.std() > 0.05  # a non-degenerate reference
    # The per-layer reconstruction must reproduce HF's own final outputs.
    np.testing.assert_allclose(logits[-1], out.logits.numpy(), atol=1e-6)
    np.testing.assert_allclose(boxes[-1], out.pred_boxes.numpy(), atol=1e-6)
    return {"root": root, "hf_dir": root / "hf", "hub_path": hub_path, "image": image, "logits": logits,
            "boxes": boxes, "hf_sd": hf_sd, "saved_sd": saved_sd}


def _load_ckpt(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def converted(reference):
    # Module-scoped, so it can run before the per-test graph_mode fixture: pick the device before any kernel.
    prefer_avx2_cpu_kernels()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    out = reference["root"] / "from_hf.ckpt"
    info = convert_detr_checkpoint(reference["hf_dir"], out, _model_cfg("detr_r50.yaml"))
    assert info["num_params"] == 458
    return out


def test_hf_resnet_is_torchvision_v15(reference):
    """Stride on the 3x3 conv of the first bottleneck of stages 2-4, as torchvision v1.5 (and DETR)."""
    sd = reference["saved_sd"]
    conv_1x1 = sd["model.backbone.conv_encoder.model.encoder.stages.1.layers.0.layer.0.convolution.weight"]
    assert tuple(conv_1x1.shape) == (128, 256, 1, 1)


def test_parity_with_transformers(reference, converted):
    """One forward of the full DETR-R50 in PyNative: the comparison is about the numbers, not graph mode, and a
    graph compilation of the whole model would cost more than the forward (the tiny model below covers graph
    mode)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = build_detr(**_model_cfg("detr_r50.yaml"))
    not_loaded, unused = ms.load_param_into_net(model, ms.load_checkpoint(str(converted)), strict_load=True)
    assert not not_loaded and not unused
    model.set_train(False)
    image = reference["image"]
    mask = np.zeros((1,) + image.shape[2:], bool)
    logits, boxes = model(ms.Tensor(image), ms.Tensor(mask))
    assert logits.shape == reference["logits"].shape == (6, 1, 100, 92)
    np.testing.assert_allclose(logits.asnumpy(), reference["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes.asnumpy(), reference["boxes"], atol=1e-4, rtol=0)


def test_postprocess_matches_transformers(reference):
    from transformers import DetrImageProcessor

    logits, boxes = reference["logits"][-1], reference["boxes"][-1]
    orig = np.array([[480.0, 640.0]], np.float32)
    expected = DetrImageProcessor().post_process_object_detection(
        transformers.models.detr.modeling_detr.DetrObjectDetectionOutput(
            logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes)),
        threshold=-1.0, target_sizes=torch.from_numpy(orig))[0]
    scores, labels, xyxy = PostProcess()(ms.Tensor(logits), ms.Tensor(boxes), ms.Tensor(orig))
    np.testing.assert_allclose(scores.asnumpy()[0], expected["scores"].numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels.asnumpy()[0], expected["labels"].numpy())
    np.testing.assert_allclose(xyxy.asnumpy()[0], expected["boxes"].numpy(), atol=1e-3)
    assert labels.dtype == ms.int32


def test_default_eval_path_is_unpadded_and_matches_transformers(reference, converted, shared_data, tmp_path):
    """evaluate_model's prediction loop (eval.unpadded, the default) on real coco_tiny images of three sizes equals
    transformers run on each image unpadded, and compiles one graph for all of them."""
    import mindspore.graph.api as graph_api
    from transformers import DetrForObjectDetection, DetrImageProcessor

    from src.data.dataset import create_dataset
    from src.evaluation.evaluate import _predict
    from src.models import build_inference_net

    cfg = load_config(CONFIGS / "detr_r50.yaml", ["data.eval_size=224", "data.eval_max_size=320"])
    assert cfg["eval"]["unpadded"] is True
    root, mindrecord = str(shared_data / "coco_tiny"), str(tmp_path / "mr")
    inputs = {}
    for image, mask, image_id, orig_size in create_dataset(root, {**cfg["data"], "eval_pad_buckets": None}, "val",
                                                           mindrecord, 1, max_images=3).create_tuple_iterator(
            columns=["image", "mask", "image_id", "orig_size"], num_epochs=1):
        assert not mask.asnumpy().any()  # nothing padded
        inputs[int(image_id.asnumpy()[0])] = (image.asnumpy(), orig_size.asnumpy())
    assert len({im.shape for im, _ in inputs.values()}) == 3  # three different sizes

    net = build_inference_net(cfg, converted)
    before = len(graph_api.ms_compile_cache)
    predictions = list(_predict(net, cfg, root, mindrecord, max_images=3))
    assert len(graph_api.ms_compile_cache) - before == 1

    model = DetrForObjectDetection.from_pretrained(reference["hf_dir"]).eval()
    processor = DetrImageProcessor()
    for image_ids, scores, labels, boxes in predictions:
        image, orig_size = inputs[int(image_ids[0])]
        with torch.no_grad():
            expected = processor.post_process_object_detection(
                model(torch.from_numpy(image)), threshold=-1.0, target_sizes=torch.from_numpy(orig_size))[0]
        np.testing.assert_allclose(scores[0], expected["scores"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(labels[0], expected["labels"].numpy())
        # boxes in original pixels: 1e-4 of the image size
        np.testing.assert_allclose(boxes[0], expected["boxes"].numpy(), atol=1e-4 * orig_size.max(), rtol=0)


def test_hub_and_timm_layouts_convert_identically(reference, converted, tmp_path):
    expected = _load_ckpt(converted)
    from_hub = tmp_path / "from_hub.ckpt"
    assert convert_main(["--model", "detr", "--source", str(reference["hub_path"]), "--output", str(from_hub)]) == 0
    # facebook/detr-resnet-50 style: timm backbone, i.e. torchvision names under the HF prefix.
    from safetensors.torch import save_file

    timm_sd = {}
    for key, value in reference["saved_sd"].items():
        prefix = "model.backbone.conv_encoder.model."
        if key.startswith(prefix):
            key = prefix + _hf_backbone_to_torchvision(key[len(prefix):])
        timm_sd[key] = value.contiguous()
    save_file(timm_sd, str(tmp_path / "timm.safetensors"))
    from_timm = tmp_path / "from_timm.ckpt"
    convert_detr_checkpoint(tmp_path / "timm.safetensors", from_timm, _model_cfg("detr_r50.yaml"))
    for path in (from_hub, from_timm):
        got = _load_ckpt(path)
        assert sorted(got) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("case", ["extra", "missing", "shape"])
def test_converter_refuses_and_writes_nothing(reference, tmp_path, case):
    state = dict(torch.load(reference["hub_path"], weights_only=True)["model"])
    if case == "extra":
        key = "transformer.encoder.layers.0.extra_gate.weight"
        state[key] = torch.zeros(3)
        expected = [key]
    elif case == "missing":
        key = "transformer.decoder.layers.2.norm3.weight"
        del state[key]
        expected = ["transformer.decoder.layers.2.norm3.gamma"]
    else:
        key = "input_proj.bias"
        state[key] = torch.zeros(255)
        expected = [key, "(255,)", "(256,)"]
    source = tmp_path / "bad.pth"
    torch.save({"model": state}, source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError) as err:
        convert_detr_checkpoint(source, out_dir / "bad.ckpt", _model_cfg("detr_r50.yaml"))
    for text in expected:
        assert text in str(err.value)
    assert list(out_dir.iterdir()) == []
    assert convert_main(["--model", "detr", "--source", str(source), "--output", str(out_dir / "c.ckpt")]) == 1
    assert list(out_dir.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_detr():
    """A random-init tiny DETR in eval mode, shared so that its graph (batch 2, 128 x 128) compiles once."""
    model = build_detr(**_model_cfg("detr_tiny.yaml"))
    model.set_train(False)
    return model


def test_tiny_detr_graph_mode_shapes(tiny_detr):
    cfg = _model_cfg("detr_tiny.yaml")
    image = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32))
    mask = np.zeros((2, 128, 128), bool)
    mask[1, 64:, :] = True
    logits, boxes = tiny_detr(image, ms.Tensor(mask))
    layers, queries = cfg["dec_layers"], cfg["num_queries"]
    assert logits.shape == (layers, 2, queries, cfg["num_classes"] + 1)
    assert boxes.shape == (layers, 2, queries, 4)
    boxes = boxes.asnumpy()
    assert np.isfinite(logits.asnumpy()).all() and ((boxes >= 0) & (boxes <= 1)).all()


def test_backbone_freezing_and_unknown_backbone():
    cfg = _model_cfg("detr_tiny.yaml")
    trainable = {p.name for p in build_detr(**{**cfg, "train_backbone": True}).trainable_params()}
    assert "backbone.body.layer2.0.conv1.weight" in trainable
    assert not any(n.startswith(("backbone.body.conv1", "backbone.body.layer1.")) for n in trainable)
    assert not any(".bn" in n or "downsample.1" in n for n in trainable)  # FrozenBN never trains
    trainable = {p.name for p in build_detr(**{**cfg, "train_backbone": False}).trainable_params()}
    assert not any(n.startswith("backbone.") for n in trainable) and "class_embed.weight" in trainable
    with pytest.raises(ValueError, match="resnet34"):
        build_detr(**{**cfg, "backbone": "resnet34"})


def test_padding_is_invisible_to_position_encoding_and_transformer():
    """Padding a feature map (mask True) must not change the encoding or the transformer's outputs.

    The whole model is not padding-invariant: backbone convolutions near the bottom/right edge see the zero
    padding. So this is checked where it holds, on the parts after the backbone. PyNative: the property is not
    about graph mode, and two shapes would mean two graph compilations.
    """
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(1)
    h, w, hp, wp, c = 3, 4, 5, 6, 32
    src = rng.standard_normal((1, c, h, w)).astype(np.float32)
    src_pad = rng.standard_normal((1, c, hp, wp)).astype(np.float32) * 10  # garbage in the padding
    src_pad[:, :, :h, :w] = src
    mask = np.zeros((1, h, w), bool)
    mask_pad = np.ones((1, hp, wp), bool)
    mask_pad[:, :h, :w] = False
    pe = PositionEmbeddingSine(c // 2)
    pos = pe(ms.Tensor(mask)).asnumpy()
    pos_pad = pe(ms.Tensor(mask_pad)).asnumpy()
    np.testing.assert_allclose(pos_pad[:, :, :h, :w], pos, atol=1e-6)

    transformer = Transformer(d_model=c, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                              dim_feedforward=64, dropout=0.1)
    transformer.set_train(False)
    query = ms.Tensor(rng.standard_normal((5, c)).astype(np.float32))
    hs, memory = transformer(ms.Tensor(src), ms.Tensor(mask), query, ms.Tensor(pos))
    hs_pad, memory_pad = transformer(ms.Tensor(src_pad), ms.Tensor(mask_pad), query, ms.Tensor(pos_pad))
    np.testing.assert_allclose(hs_pad.asnumpy(), hs.asnumpy(), atol=1e-5)
    np.testing.assert_allclose(memory_pad.asnumpy()[:, :, :h, :w], memory.asnumpy(), atol=1e-5)


def test_batch_elements_are_independent(tiny_detr):
    """An image's outputs do not depend on what else is in the (padded) batch."""
    model = tiny_detr
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 3, 128, 128)).astype(np.float32)
    images[0, :, 96:, :] = 0
    mask = np.zeros((3, 128, 128), bool)
    mask[0, 96:, :] = True
    first = model(ms.Tensor(images[[0, 1]]), ms.Tensor(mask[[0, 1]]))
    second = model(ms.Tensor(images[[0, 2]]), ms.Tensor(mask[[0, 2]]))
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.asnumpy()[:, 0], b.asnumpy()[:, 0], atol=1e-5)
        assert not np.allclose(a.asnumpy()[:, 1], b.asnumpy()[:, 1], atol=1e-3)


def test_infer_backbone_depth_from_keys():
    def keys(blocks):
        return {f"backbone.0.body.layer3.{i}.conv1.weight": None for i in range(blocks)}

    assert infer_backbone(keys(6)) == "resnet50"
    assert infer_backbone(keys(23)) == "resnet101"
    assert infer_backbone(keys(5)) is None
