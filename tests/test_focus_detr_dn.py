"""Focus-DETR contrastive denoising: slot layout and attention mask by hand, noise by construction and in
distribution, decoder isolation of the groups, the DN loss against a transcription of detrex ``compute_dn_loss``,
and training steps on real coco_tiny images with denoising off through the loss network (denoising on trains the
tiny config through the trainer, in graph mode, in tests/test_focus_detr_train.py). The decoder and training tests
run in PyNative: what they check does not depend on the mode, and their graph compilations took most of this
module's time.

The references are written from detrex ``projects/focus_detr/modeling/focus_detr.py::prepare_for_cdn`` and
``dn_criterion.py::compute_dn_loss`` (index arithmetic ``output_idx = group * 2m + j`` over the first ``2 m groups``
slots), not from the code under test.
"""

import json
from pathlib import Path

import cv2
import mindspore as ms
import numpy as np
import torch
from mindspore import Tensor, nn

from src.config import load_config
from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.engine.train_step import TrainStep
from src.layers.mlp import MLP
from src.models import build_model
from src.models.focus_detr.criterion import build_criterion
from src.models.focus_detr.decoder import FocusDETRDecoder
from src.models.focus_detr.dn import (
    DenoisingQueries,
    denoising_attention_mask,
    denoising_layout,
    noisy_denoising_targets,
)
from src.models.focus_detr.model import FocusDETRWithLoss

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "focus_detr" / "focus_detr_tiny.yaml"
ALPHA, GAMMA = 0.25, 2.0


def _layout(valid, dn_number):
    return [x.asnumpy() for x in denoising_layout(Tensor(np.asarray(valid, bool)), dn_number)]


def test_layout_and_attention_mask_block_structure():
    # Counts 3 and 1, dn_number 7: m = 3, groups = 7 // 3 = 2 of 6 slots; S = 2 * max(7, 4) = 14, so slots 12-13
    # are a trailing group of their own. Three matching queries follow.
    gt_index, positive, group, in_group, slot_valid, groups, has_gt = _layout(
        [[1, 1, 1, 0], [1, 0, 0, 0]], dn_number=7)
    assert gt_index.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    assert positive.tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]
    assert in_group.tolist() == [1] * 12 + [0, 0]
    assert slot_valid[0].tolist() == [1] * 12 + [0, 0]
    assert slot_valid[1].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    assert int(groups) == 2 and bool(has_gt)
    picture = [  # x: the row query may not see the column key; columns/rows 14-16 are the matching queries.
        "......xxxxxxxx...",
        "......xxxxxxxx...",
        "......xxxxxxxx...",
        "......xxxxxxxx...",
        "......xxxxxxxx...",
        "......xxxxxxxx...",
        "xxxxxx......xx...",
        "xxxxxx......xx...",
        "xxxxxx......xx...",
        "xxxxxx......xx...",
        "xxxxxx......xx...",
        "xxxxxx......xx...",
        "xxxxxxxxxxxx.....",
        "xxxxxxxxxxxx.....",
        "xxxxxxxxxxxxxx...",
        "xxxxxxxxxxxxxx...",
        "xxxxxxxxxxxxxx...",
    ]
    expected = np.array([[c == "x" for c in row] for row in picture])
    np.testing.assert_array_equal(denoising_attention_mask(Tensor(group), 3).asnumpy(), expected)


def test_layout_edge_cases():
    # More boxes than dn_number: one group (detrex: 2*dn // (2*max_gt) == 0 -> 1), S = 2 * N.
    gt_index, positive, _, in_group, slot_valid, groups, _ = _layout([[1, 1, 1, 1], [1, 1, 0, 0]], dn_number=2)
    assert gt_index.tolist() == [0, 1, 2, 3, 0, 1, 2, 3] and positive.tolist() == [1] * 4 + [0] * 4
    assert int(groups) == 1 and in_group.all()
    assert slot_valid[1].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    # No box in the batch: no valid slot and no denoising loss.
    *_, slot_valid, groups, has_gt = _layout([[0, 0], [0, 0]], dn_number=4)
    assert not slot_valid.any() and not bool(has_gt)


def test_noise_by_construction_on_hand_made_targets():
    # Image 0: box 0 (0.5, 0.5, 0.2, 0.4) class 3, box 1 (0.1, 0.1, 0.2, 0.2) class 7; image 1: box 0 only.
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.2, 0.2]], [[0.3, 0.3, 0.2, 0.2], [0, 0, 0, 0]]],
                     np.float32)
    labels = np.array([[3, 7], [6, 0]], np.int32)
    layout = denoising_layout(Tensor(np.array([[1, 1], [1, 0]], bool)), 2)  # S = 4: pos 0, 1 / neg 0, 1
    gt_index, positive, _, _, slot_valid = layout[:5]
    u_flip = np.array([[0.2, 0.3, 0.24, 0.9]] * 2, np.float32)  # flip below 0.5 / 2: slots 0 and 2
    u_class = np.array([[0.5, 0.99, 0.0, 0.7]] * 2, np.float32)  # K = 10 -> 5, (9), 0, (7)
    u_sign = np.array([[[0.9, 0.1, 0.9, 0.1], [0.1] * 4, [0.1, 0.1, 0.9, 0.9], [0.9] * 4]] * 2, np.float32)
    u_shift = np.array([[[0.5] * 4, [0.2] * 4, [0.25] * 4, [0.5] * 4]] * 2, np.float32)
    args = [Tensor(boxes), Tensor(labels), gt_index, positive, slot_valid, Tensor(u_flip), Tensor(u_class),
            Tensor(u_sign), Tensor(u_shift), 10]
    out_labels, out_boxes = (x.asnumpy() for x in noisy_denoising_targets(*args, 0.5, 1.0))
    assert out_labels[0].tolist() == [5, 7, 0, 7]
    # Worked by hand: slot 0 corners (0.4, 0.3, 0.6, 0.7) + 0.5 * (+0.1, -0.2, +0.1, -0.2); slot 1 corners move
    # by -0.2 * 0.1 and x0, y0 clamp at 0; negatives move by 1.25 (slot 2) and 1.5 (slot 3) half sizes.
    expected = [[0.55, 0.4, 0.2, 0.4], [0.09, 0.09, 0.18, 0.18], [0.5, 0.5, 0.45, 0.9], [0.25, 0.25, 0.2, 0.2]]
    np.testing.assert_allclose(out_boxes[0], expected, atol=1e-6)
    # Image 1 has one box: slots copying box 1 are padding (class 0, all-zero box).
    assert out_labels[1, 1] == 0 and out_labels[1, 3] == 0
    np.testing.assert_array_equal(out_boxes[1, [1, 3]], 0.0)
    assert out_labels[1, 0] == 5  # flipped to floor(0.5 * 10)
    # Ratios 0 switch the noise off.
    clean_labels, clean_boxes = (x.asnumpy() for x in noisy_denoising_targets(*args, 0.0, 0.0))
    assert clean_labels[0].tolist() == [3, 7, 3, 7]
    np.testing.assert_allclose(clean_boxes[0], boxes[0][[0, 1, 0, 1]], atol=1e-7)


def test_noise_statistics_of_the_drawn_queries():
    ms.set_seed(3)
    num_classes, dn_number = 80, 500
    boxes = np.tile(np.array([0.5, 0.5, 0.2, 0.2], np.float32), (2, 1, 1))
    labels = np.array([[3], [40]], np.int32)
    # An identity label table makes each query the one-hot of its (noised) class.
    query, ref_unact, attn_mask, _, positive, _, slot_valid, groups, _ = DenoisingQueries(
        num_classes, dn_number, 0.5, 1.0)(Tensor(boxes), Tensor(labels), Tensor(np.ones((2, 1), bool)),
                                          Tensor(np.eye(num_classes, dtype=np.float32)), 5)
    assert query.shape == (2, 1000, num_classes) and attn_mask.shape == (1005, 1005)
    assert int(groups) == dn_number and slot_valid.asnumpy().all()
    flipped = query.asnumpy().argmax(-1) != labels
    np.testing.assert_allclose(flipped.mean(), 0.25 * (num_classes - 1) / num_classes, atol=0.04)
    noised = 1.0 / (1.0 + np.exp(-ref_unact.asnumpy().astype(np.float64)))
    corners = np.concatenate([noised[..., :2] - noised[..., 2:] / 2, noised[..., :2] + noised[..., 2:] / 2], -1)
    shift = (corners - np.array([0.4, 0.4, 0.6, 0.6])) / 0.1  # in half sizes; no clamping for this box
    positive = positive.asnumpy()
    pos = np.abs(shift[:, positive])
    assert pos.max() < 1 + 1e-4
    np.testing.assert_allclose(pos.mean(), 0.5, atol=0.03)
    # A negative may come out inverted (x0 > x1), which the reference keeps and its inverse_sigmoid clamps to an
    # empty box; the corners are recoverable only where the extent stayed positive.
    extent = np.tile(noised[..., 2:], 2)[:, ~positive] > 2e-3
    neg = np.abs(shift[:, ~positive])[extent]
    assert extent.mean() > 0.5 and neg.min() > 1 - 1e-4 and neg.max() < 2 + 1e-4
    np.testing.assert_allclose((shift[:, positive] < 0).mean(), 0.5, atol=0.03)


def test_decoder_mask_isolates_groups_and_matching_queries():
    # PyNative: the isolation does not depend on the mode, and the two query counts would be two compilations.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    dim, num_queries, shapes = 32, 3, ((4, 4), (2, 2))
    heads = nn.CellList([MLP(dim, dim, 4, 3) for _ in range(2)])
    decoder = FocusDETRDecoder(heads, dim, 4, 64, num_layers=2, num_levels=2)
    rng = np.random.default_rng(0)
    memory = Tensor(rng.normal(size=(1, 20, dim)).astype(np.float32))
    memory_mask = Tensor(np.zeros((1, 20), bool))
    ratios = Tensor(np.ones((1, 2, 2), np.float32))
    group = denoising_layout(Tensor(np.array([[1, 1, 1, 0]], bool)), 7)[2]  # groups 0, 0, .., 1, .., 2, 2
    mask = denoising_attention_mask(group, num_queries)
    target = rng.normal(size=(1, 17, dim)).astype(np.float32)
    refs = rng.uniform(0.2, 0.8, size=(1, 17, 4)).astype(np.float32)

    def run(tgt, ref, attn_mask):
        return decoder(Tensor(tgt), memory, memory_mask, Tensor(ref), ratios, shapes, attn_mask)[0].asnumpy()[-1, 0]

    full = run(target, refs, mask)
    alone = run(target[:, 14:], refs[:, 14:], None)
    np.testing.assert_allclose(full[14:], alone, atol=1e-5)  # matching queries never see denoising slots
    perturbed = target.copy()
    perturbed[:, 6:12] += 1.0  # group 1 only
    changed = np.abs(run(perturbed, refs, mask) - full).max(-1)
    assert changed[6:12].min() > 1e-3
    assert changed[:6].max() < 1e-5 and changed[12:].max() < 1e-5


def _detrex_dn_loss(logits, boxes, tgt_boxes, labels, counts, max_gt, groups, num_boxes, layers):
    """detrex compute_dn_loss on the first 2 m groups slots (float64 torch)."""
    total = 0.0
    pad = 2 * max_gt * groups
    for layer in layers:
        x = torch.tensor(logits[layer][:, :pad], dtype=torch.float64)
        onehot = torch.zeros_like(x)
        l1 = giou = 0.0
        for b, n in enumerate(counts):
            t = np.tile(np.arange(n), groups)
            out = (np.arange(groups)[:, None] * 2 * max_gt + np.arange(n)[None]).reshape(-1)
            onehot[b, out, labels[b, t]] = 1.0
            src = torch.tensor(boxes[layer][b, out], dtype=torch.float64)
            dst = torch.tensor(tgt_boxes[b, t], dtype=torch.float64)
            l1 = l1 + (src - dst).abs().sum()

            def xyxy(v):
                return torch.cat([v[:, :2] - v[:, 2:] / 2, v[:, :2] + v[:, 2:] / 2], 1)
            a, c = xyxy(src), xyxy(dst)
            inter = (torch.min(a[:, 2:], c[:, 2:]) - torch.max(a[:, :2], c[:, :2])).clamp(min=0).prod(1)
            union = (a[:, 2:] - a[:, :2]).prod(1) + (c[:, 2:] - c[:, :2]).prod(1) - inter
            hull = (torch.max(a[:, 2:], c[:, 2:]) - torch.min(a[:, :2], c[:, :2])).prod(1)
            giou = giou + (1 - (inter / union - (hull - union) / hull)).sum()
        p = torch.sigmoid(x)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x, onehot, reduction="none")
        p_t = p * onehot + (1 - p) * (1 - onehot)
        focal = ce * (1 - p_t) ** GAMMA * (ALPHA * onehot + (1 - ALPHA) * (1 - onehot))
        norm = num_boxes * groups
        total += float(focal.mean(1).sum() / norm * pad) + 5 * float(l1 / norm) + 2 * float(giou / norm)
    return total


def test_denoising_loss_matches_a_detrex_transcription():
    rng = np.random.default_rng(4)
    valid = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)  # m = 3, dn_number 7: 2 groups, 14 slots
    tgt_boxes = np.zeros((2, 4, 4), np.float32)
    tgt_boxes[valid] = np.concatenate([rng.uniform(0.3, 0.7, (4, 2)), rng.uniform(0.1, 0.3, (4, 2))], 1)
    labels = np.where(valid, rng.integers(0, 80, (2, 4)), 0).astype(np.int32)
    logits = rng.normal(0, 2, (2, 2, 14, 80)).astype(np.float32)
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (2, 2, 14, 2)), rng.uniform(0.1, 0.3, (2, 2, 14, 2))],
                           -1).astype(np.float32)
    layout = list(denoising_layout(Tensor(valid), 7))
    del layout[2]  # the group ids are not a loss input
    num_boxes = build_criterion().num_boxes(Tensor(valid))
    args = [Tensor(logits), Tensor(boxes), *layout, Tensor(tgt_boxes), Tensor(labels), num_boxes]
    expected = _detrex_dn_loss(logits, boxes, tgt_boxes, labels, (3, 1), 3, 2, 4.0, (0, 1))
    np.testing.assert_allclose(build_criterion().denoising_loss(*args).asnumpy(), expected, rtol=1e-4)
    final_only = _detrex_dn_loss(logits, boxes, tgt_boxes, labels, (3, 1), 3, 2, 4.0, (1,))
    np.testing.assert_allclose(build_criterion(aux_loss=False).denoising_loss(*args).asnumpy(), final_only,
                               rtol=1e-4)


def _coco_tiny_batch(coco_dir: Path, pad_hw=(64, 96)):
    """Two coco_tiny train images resized into ``pad_hw`` (padded bottom/right) with normalized cxcywh targets."""
    with open(coco_dir / "annotations" / "instances_train2017.json", encoding="utf-8") as handle:
        data = json.load(handle)
    anns = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            anns.setdefault(ann["image_id"], []).append(ann)
    images = [img for img in data["images"] if img["id"] in anns][:2]
    max_boxes = 20
    image = np.zeros((2, 3) + pad_hw, np.float32)
    mask = np.ones((2,) + pad_hw, bool)
    tgt_boxes = np.zeros((2, max_boxes, 4), np.float32)
    tgt_labels = np.zeros((2, max_boxes), np.int32)
    tgt_valid = np.zeros((2, max_boxes), bool)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    for i, img in enumerate(images):
        scale = min(pad_hw[0] / img["height"], pad_hw[1] / img["width"])
        h, w = int(img["height"] * scale), int(img["width"] * scale)
        bgr = cv2.imread(str(coco_dir / "train2017" / img["file_name"]))
        assert bgr is not None, img["file_name"]
        rgb = cv2.resize(bgr, (w, h))[:, :, ::-1].astype(np.float32) / 255.0
        image[i, :, :h, :w] = ((rgb - mean) / std).transpose(2, 0, 1)
        mask[i, :h, :w] = False
        for j, ann in enumerate(anns[img["id"]][:max_boxes]):
            x, y, bw, bh = ann["bbox"]
            tgt_boxes[i, j] = [(x + bw / 2) / img["width"], (y + bh / 2) / img["height"], bw / img["width"],
                               bh / img["height"]]
            tgt_labels[i, j] = ann["category_id"]
            tgt_valid[i, j] = True
    assert set(tgt_labels[tgt_valid].tolist()) <= set(COCO_CATEGORY_NAMES)
    return [Tensor(x) for x in (image, mask, tgt_boxes, tgt_labels, tgt_valid)]


def test_tiny_config_trains_without_denoising(shared_data):
    # Denoising on is trained by tests/test_focus_detr_train.py (the tiny config through the trainer, graph mode).
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    detector = build_model(load_config(TINY, ["model.dn_number=0", "model.num_queries=10"]))
    assert isinstance(detector.train_network, FocusDETRWithLoss)
    batch = _coco_tiny_batch(shared_data / "coco_tiny")
    # Plain Adam: a parameter without gradient stays put (no weight decay).
    optimizer = nn.Adam(detector.network.trainable_params(), learning_rate=2e-3)
    train_step = TrainStep(detector.train_network, optimizer, clip_max_norm=0.1)
    train_step.set_train(True)
    params = {p.name: p for p in detector.network.get_parameters()}
    label_enc, head = params["label_enc.embedding_table"], params["class_embed.1.weight"]
    label_before, head_before = label_enc.asnumpy().copy(), head.asnumpy().copy()
    for _ in range(2):
        loss, terms, grad_norm = train_step(*batch)
        assert np.isfinite(loss.asnumpy()) and np.isfinite(grad_norm.asnumpy())
        assert terms.shape == (3,) and np.isfinite(terms.asnumpy()).all()
    # Without denoising the label embedding gets no gradient; the heads do train.
    np.testing.assert_array_equal(label_enc.asnumpy(), label_before)
    assert np.abs(head.asnumpy() - head_before).max() > 0
