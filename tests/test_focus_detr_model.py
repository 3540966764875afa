"""Focus-DETR model: backbone key mapping, encoder selection semantics, graph-mode forward, gradient reach.

The forward and backward run a tiny configuration (width 32, 2 encoder and 2 decoder layers) on two real
coco_tiny images of different sizes, zero-padded into one 64 x 96 batch. The forward runs in graph mode; the
other tests run in PyNative, since what they check does not depend on the mode and each graph compilation costs
from ten to tens of seconds (graph-mode training of the tiny config is in tests/test_focus_detr_train.py).
"""

import json

import cv2
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.models.focus_detr.backbone import MultiLevelResNet, detectron2_to_mindspore_key
from src.models.focus_detr.encoder import FocusDETREncoder
from src.models.focus_detr.fts import select_foreground_tokens
from src.models.focus_detr.model import FocusDETR

PAD_HW = (64, 96)
IMAGE_HW = ((64, 96), (48, 64))
STRIDES = (8, 16, 32, 64)
NUM_CLASSES = 5
NUM_QUERIES = 20
DEC_LAYERS = 2


def _level_sizes():
    # Strided convs (kernel 3, pad 1 / 1x1) round up: ceil(size / stride) at every level.
    return [(-(-PAD_HW[0] // s), -(-PAD_HW[1] // s)) for s in STRIDES]


def _expected_token_padding():
    """Token padding mask from nearest downsampling of the image mask, computed independently with NumPy."""
    rows = []
    for img_h, img_w in IMAGE_HW:
        mask = np.ones(PAD_HW, bool)
        mask[:img_h, :img_w] = False
        levels = []
        for feat_h, feat_w in _level_sizes():
            ys = np.floor(np.arange(feat_h) * PAD_HW[0] / feat_h).astype(int)
            xs = np.floor(np.arange(feat_w) * PAD_HW[1] / feat_w).astype(int)
            levels.append(mask[ys][:, xs].reshape(-1))
        rows.append(np.concatenate(levels))
    return np.stack(rows)


@pytest.fixture(scope="module")
def coco_batch(shared_data):
    coco_dir = shared_data / "coco_tiny"
    with open(coco_dir / "annotations" / "instances_val2017.json", encoding="utf-8") as handle:
        files = [img["file_name"] for img in json.load(handle)["images"][:2]]
    image = np.zeros((2, 3) + PAD_HW, np.float32)
    mask = np.ones((2,) + PAD_HW, bool)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for i, (name, (img_h, img_w)) in enumerate(zip(files, IMAGE_HW)):
        bgr = cv2.imread(str(coco_dir / "val2017" / name))
        assert bgr is not None, name
        rgb = cv2.resize(bgr, (img_w, img_h))[:, :, ::-1].astype(np.float32) / 255.0
        image[i, :, :img_h, :img_w] = ((rgb - mean) / std).transpose(2, 0, 1)
        mask[i, :img_h, :img_w] = False
    return Tensor(image), Tensor(mask)


@pytest.fixture(scope="module")
def tiny_model():
    ms.set_seed(0)
    return FocusDETR(num_classes=NUM_CLASSES, embed_dim=32, num_heads=4, enc_layers=2, dec_layers=DEC_LAYERS,
                     feedforward_dim=64, num_queries=NUM_QUERIES, oesm_topk=16)


def test_backbone_levels_and_detectron2_key_mapping():
    # PyNative: the level shapes and names do not depend on graph mode, and one forward costs less than compiling
    # the ResNet-50 graph (the tiny model tests below run in graph mode).
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = MultiLevelResNet("resnet50")
    outs = net(Tensor(np.zeros((1, 3) + PAD_HW, np.float32)))
    assert [tuple(o.shape) for o in outs] == [(1, c, h, w) for c, (h, w) in zip((512, 1024, 2048),
                                                                                  _level_sizes()[:3])]
    # detectron2 R50 layout written out by hand: stem, res2..res5 with 3/4/6/3 blocks, shortcut on block 0.
    norm = ("weight", "bias", "running_mean", "running_var")
    d2_keys = ["backbone.stem.conv1.weight"] + [f"backbone.stem.conv1.norm.{n}" for n in norm]
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for block in range(blocks):
            for module in ("conv1", "conv2", "conv3") + (("shortcut",) if block == 0 else ()):
                prefix = f"backbone.res{stage}.{block}.{module}"
                d2_keys += [f"{prefix}.weight"] + [f"{prefix}.norm.{n}" for n in norm]
    mapped = [detectron2_to_mindspore_key(k) for k in d2_keys]
    ours = {"backbone." + p.name for p in net.get_parameters()}
    assert None not in mapped
    assert len(set(mapped)) == len(d2_keys)
    assert set(mapped) == ours
    assert detectron2_to_mindspore_key("neck.convs.0.conv.weight") is None
    frozen = {p.name for p in net.get_parameters() if not p.requires_grad}
    assert {"body.conv1.weight", "body.layer1.0.conv1.weight"} & frozen == {"body.conv1.weight"}


def test_encoder_only_updates_selected_non_padding_tokens():
    # PyNative: which tokens are rewritten does not depend on the mode; a graph compilation costs more than the run.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(1)
    shapes = ((8, 8), (4, 4), (2, 2), (1, 1))
    batch, num_tokens, dim = 2, 85, 32

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.head = nn.Dense(dim, NUM_CLASSES)
            self.encoder = FocusDETREncoder(self.head, dim, 4, 64, num_layers=2, num_levels=4, oesm_topk=10)

        def construct(self, feat, pos, mask, refs, scores):
            indices, valid, _ = select_foreground_tokens(scores, mask, cascade=(1.0, 0.8))
            return self.encoder(feat, pos, mask, refs, scores, indices, valid, shapes), indices, valid[0]

    rng = np.random.default_rng(0)
    mask = np.zeros((batch, num_tokens), bool)
    mask[1, 32:64] = True  # image 1: half of the finest level is padding
    scores = rng.normal(size=(batch, num_tokens)).astype(np.float32)
    scores[1, 32:64] += 100.0  # padding scored highest must still never be selected
    feat = rng.normal(size=(batch, num_tokens, dim)).astype(np.float32)
    memory, indices, valid = Net()(Tensor(feat), Tensor(rng.normal(size=(batch, num_tokens, dim)).astype(np.float32)),
                                   Tensor(mask), Tensor(rng.uniform(size=(batch, num_tokens, 4, 2)).astype(np.float32)),
                                   Tensor(scores))
    memory, indices, valid = memory.asnumpy(), indices.asnumpy(), valid.asnumpy()
    changed = np.abs(memory - feat).max(-1) > 1e-6
    for b in range(batch):
        selected = set(indices[b][valid[b]].tolist())
        assert not selected & set(np.flatnonzero(mask[b]).tolist())
        # Exactly the selected tokens are rewritten; padding keeps its features.
        assert set(np.flatnonzero(changed[b]).tolist()) == selected
        n_valid = int((~mask[b]).sum())
        assert len(selected) == min(int(n_valid * 0.5) + 1, n_valid)


def test_forward_graph_real_images(tiny_model, coco_batch):
    tiny_model.set_train(False)
    logits, boxes, enc_logits, enc_boxes, fg_logits, mask_flatten = tiny_model(*coco_batch)
    num_tokens = sum(h * w for h, w in _level_sizes())
    assert logits.shape == (DEC_LAYERS, 2, NUM_QUERIES, NUM_CLASSES)
    assert boxes.shape == (DEC_LAYERS, 2, NUM_QUERIES, 4)
    assert enc_logits.shape == (2, NUM_QUERIES, NUM_CLASSES)
    assert enc_boxes.shape == (2, NUM_QUERIES, 4)
    assert fg_logits.shape == (2, num_tokens)
    for out in (logits, boxes, enc_logits, enc_boxes, fg_logits):
        assert np.isfinite(out.asnumpy()).all()
    for box in (boxes.asnumpy(), enc_boxes.asnumpy()):
        assert box.min() >= 0.0 and box.max() <= 1.0
    np.testing.assert_array_equal(mask_flatten.asnumpy(), _expected_token_padding())
    # The two images differ, so must their predictions (the batch is not mixed up or broadcast).
    assert not np.allclose(logits.asnumpy()[-1, 0], logits.asnumpy()[-1, 1])


def test_gradients_reach_fts_alpha_and_class_heads(tiny_model, coco_batch):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    tiny_model.set_train(True)
    params = tiny_model.trainable_params()
    names = [p.name for p in params]

    def loss_fn(image, mask):
        logits, boxes, enc_logits, enc_boxes, fg_logits, _ = tiny_model(image, mask)
        return logits.sum() + boxes.sum() + enc_logits.sum() + enc_boxes.sum() + fg_logits.sum()

    grad_fn = ms.value_and_grad(loss_fn, None, params)
    loss, grads = grad_fn(*coco_batch)
    tiny_model.set_train(False)
    assert np.isfinite(loss.asnumpy())
    grads = {name: g.asnumpy() for name, g in zip(names, grads)}
    for name in ("transformer.alpha", f"class_embed.{DEC_LAYERS - 1}.weight", f"class_embed.{DEC_LAYERS}.weight",
                 "transformer.enc_mask_predictor.layer2.4.weight", "transformer.tgt_embed.embedding_table"):
        assert np.isfinite(grads[name]).all(), name
        assert np.abs(grads[name]).max() > 0, name
    assert all(np.isfinite(g).all() for g in grads.values())


def test_dense_encoder_variant_loads_the_same_weights_and_runs(tiny_model, coco_batch):
    # token_selection=False: the DINO-equivalent encoder (inference-cost baseline) with the same parameter set.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    dense = FocusDETR(num_classes=NUM_CLASSES, embed_dim=32, num_heads=4, enc_layers=2, dec_layers=DEC_LAYERS,
                      feedforward_dim=64, num_queries=NUM_QUERIES, oesm_topk=16, token_selection=False)
    not_loaded = ms.load_param_into_net(dense, {p.name: p for p in tiny_model.get_parameters()}, strict_load=True)
    assert not_loaded == ([], [])
    dense.set_train(False)
    tiny_model.set_train(False)
    logits, boxes, _, _, fg_logits, _ = dense(*coco_batch)
    assert np.isfinite(logits.asnumpy()).all() and np.isfinite(boxes.asnumpy()).all()
    np.testing.assert_array_equal(fg_logits.asnumpy(), 0.0)  # the selector does not run
    assert not np.allclose(logits.asnumpy(), tiny_model(*coco_batch)[0].asnumpy(), atol=1e-4)
