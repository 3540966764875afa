"""Focus-DETR training: focal matcher and criterion vs independent NumPy/torch transcriptions, and the tiny config
trained on real coco_tiny images through the zoo's trainer and evaluated through its inference graph.

The references here are written from detrex (``detrex/modeling/matcher.py`` focal cost,
``detrex/modeling/criterion/criterion.py`` losses with ``loss.mean(1).sum() / num_boxes * num_queries``,
``projects/focus_detr/modeling/foreground_supervision.py`` GenTargets), not from the code under test.
"""

import json
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor
from scipy.optimize import linear_sum_assignment

from src.checkpoint import load_pretrained
from src.config import load_config
from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.engine.trainer import TrainOptions, train
from src.evaluation.evaluate import evaluate_model
from src.models import build_model
from src.models.focus_detr.criterion import build_criterion
from src.ops.matcher import HungarianMatcher
from src.runtime import RuntimeInfo

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "focus_detr" / "focus_detr_tiny.yaml"
NUM_CLASSES = 80
IMAGE_HW = (64, 96)
LEVELS = ((8, 12), (4, 6), (2, 3), (1, 2))  # ceil(64/s) x ceil(96/s) for strides 8, 16, 32, 64
STRIDES = (8, 16, 32, 64)
RANGES = ((-1, 64), (64, 128), (128, 256), (256, 999999))
ALPHA, GAMMA = 0.25, 2.0


def _np_giou(a, b):
    """Pairwise GIoU of cxcywh boxes [n,4] x [m,4] -> [n,m] (NumPy)."""
    def xyxy(x):
        return np.concatenate([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], axis=1)
    a, b = xyxy(a), xyxy(b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    enc = (np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2])).prod(-1)
    return inter / union - (enc - union) / enc


def _np_focal_cost(logits, labels):
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    neg = (1 - ALPHA) * prob ** GAMMA * -np.log(1 - prob + 1e-8)
    pos = ALPHA * (1 - prob) ** GAMMA * -np.log(prob + 1e-8)
    return (pos - neg)[:, labels]


def _reference_match(logits, boxes, tgt_boxes, tgt_labels):
    """detrex focal HungarianMatcher (weights 2/5/2) on one image's valid targets with SciPy."""
    cost = (5 * np.abs(boxes[:, None] - tgt_boxes[None]).sum(-1) + 2 * _np_focal_cost(logits, tgt_labels)
            - 2 * _np_giou(boxes, tgt_boxes))
    return linear_sum_assignment(cost)


def _random_outputs(seed, layers=2, batch=2, queries=12):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(layers, batch, queries, NUM_CLASSES)).astype(np.float32)
    centers = rng.uniform(0.2, 0.8, size=(layers, batch, queries, 2))
    sizes = rng.uniform(0.05, 0.4, size=(layers, batch, queries, 2))
    boxes = np.concatenate([centers, sizes], -1).astype(np.float32)
    enc_logits = rng.normal(0, 2, size=(batch, queries, NUM_CLASSES)).astype(np.float32)
    enc_boxes = np.concatenate([rng.uniform(0.2, 0.8, (batch, queries, 2)),
                                rng.uniform(0.05, 0.4, (batch, queries, 2))], -1).astype(np.float32)
    num_tokens = sum(h * w for h, w in LEVELS)
    fg_logits = rng.normal(0, 3, size=(batch, num_tokens)).astype(np.float32)
    return logits, boxes, enc_logits, enc_boxes, fg_logits


def _targets(max_boxes=5):
    """Two images: 3 boxes (raw COCO ids incl. the largest id 90) and 1 box; padded rows 0."""
    tgt_boxes = np.zeros((2, max_boxes, 4), np.float32)
    tgt_labels = np.zeros((2, max_boxes), np.int32)
    tgt_valid = np.zeros((2, max_boxes), bool)
    tgt_boxes[0, :3] = [[0.5, 0.5, 0.6, 0.7], [0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]
    tgt_labels[0, :3] = [1, 90, 13]
    tgt_valid[0, :3] = True
    tgt_boxes[1, :1] = [[0.4, 0.5, 0.5, 0.5]]
    tgt_labels[1, :1] = [44]
    tgt_valid[1, :1] = True
    return tgt_boxes, tgt_labels, tgt_valid


def _image_mask():
    """Image 0 fills 64x96, image 1 is 48x64 (zero-padded bottom/right)."""
    mask = np.ones((2,) + IMAGE_HW, bool)
    mask[0] = False
    mask[1, :48, :64] = False
    return mask


def _token_mask(mask):
    rows = []
    for m in mask:
        levels = []
        for h, w in LEVELS:
            ys = np.floor(np.arange(h) * IMAGE_HW[0] / h).astype(int)
            xs = np.floor(np.arange(w) * IMAGE_HW[1] / w).astype(int)
            levels.append(m[ys][:, xs].reshape(-1))
        rows.append(np.concatenate(levels))
    return np.stack(rows)


def _criterion_inputs(seed, targets):
    logits, boxes, enc_logits, enc_boxes, fg_logits = _random_outputs(seed)
    mask = _image_mask()
    outs = (logits, boxes, enc_logits, enc_boxes, fg_logits, _token_mask(mask), mask) + targets
    return outs, [Tensor(x) for x in outs]


def _torch_set_losses(logits, boxes, tgt_boxes, contiguous, tgt_valid, num_boxes):
    """detrex SetCriterion focal/L1/GIoU for one prediction set, matching with the NumPy/SciPy reference."""
    batch, queries, _ = logits.shape
    onehot = np.zeros(logits.shape, np.float32)
    l1 = giou = 0.0
    for b in range(batch):
        n = int(tgt_valid[b].sum())
        rows, cols = _reference_match(logits[b], boxes[b], tgt_boxes[b, :n], contiguous[b, :n])
        onehot[b, rows, contiguous[b, cols]] = 1.0
        src = torch.tensor(boxes[b, rows], dtype=torch.float64)
        dst = torch.tensor(tgt_boxes[b, cols], dtype=torch.float64)
        l1 = l1 + (src - dst).abs().sum()
        giou = giou + (1 - torch.tensor(np.diag(_np_giou(src.numpy(), dst.numpy())))).sum()
    x = torch.tensor(logits, dtype=torch.float64)
    t = torch.tensor(onehot, dtype=torch.float64)
    p = torch.sigmoid(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ce * (1 - p_t) ** GAMMA * (ALPHA * t + (1 - ALPHA) * (1 - t))
    loss_class = focal.mean(1).sum() / num_boxes * queries
    return np.array([float(loss_class), float(l1 / num_boxes), float(giou / num_boxes)])


def _np_fcos_labels(tgt_boxes, tgt_valid, mask):
    """GenTargets with one class, written out point by point (no centre sampling, as the reference)."""
    labels = []
    for b in range(len(tgt_boxes)):
        img_h = int((~mask[b][:, 0]).sum())
        img_w = int((~mask[b][0, :]).sum())
        row = []
        for (h, w), s, (lo, hi) in zip(LEVELS, STRIDES, RANGES):
            for i in range(h):
                for j in range(w):
                    x, y = j * s + s // 2, i * s + s // 2
                    fg = 0.0
                    for (cx, cy, bw, bh), ok in zip(tgt_boxes[b], tgt_valid[b]):
                        if not ok:
                            continue
                        x0, x1 = (cx - bw / 2) * img_w, (cx + bw / 2) * img_w
                        y0, y1 = (cy - bh / 2) * img_h, (cy + bh / 2) * img_h
                        ltrb = (x - x0, y - y0, x1 - x, y1 - y)
                        if min(ltrb) > 0 and lo < max(ltrb) <= hi:
                            fg = 1.0
                    row.append(fg)
        labels.append(row)
    return np.asarray(labels)


def _torch_select_loss(fg_logits, labels):
    x = torch.tensor(fg_logits, dtype=torch.float64)
    t = torch.tensor(labels, dtype=torch.float64)
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    w = ALPHA * t + (1 - ALPHA) * (1 - t)
    loss = (-w * (1 - p_t) ** GAMMA * torch.log(p_t)).sum(1) / t.sum(1).clamp(min=1)
    return float(loss.mean())


def test_focal_matcher_equals_scipy_on_the_focal_cost():
    logits, boxes, *_ = _random_outputs(3, layers=1)
    tgt_boxes, tgt_labels, tgt_valid = _targets()
    contiguous = np.where(tgt_valid, tgt_labels % NUM_CLASSES, 0).astype(np.int32)
    matcher = HungarianMatcher(2.0, 5.0, 2.0, class_cost="focal", focal_alpha=ALPHA, focal_gamma=GAMMA)
    query_to_tgt, tgt_to_query = matcher(Tensor(logits[0]), Tensor(boxes[0]), Tensor(tgt_boxes),
                                         Tensor(contiguous), Tensor(tgt_valid))
    query_to_tgt, tgt_to_query = query_to_tgt.asnumpy(), tgt_to_query.asnumpy()
    for b in range(2):
        n = int(tgt_valid[b].sum())
        rows, cols = _reference_match(logits[0, b], boxes[0, b], tgt_boxes[b, :n], contiguous[b, :n])
        np.testing.assert_array_equal(tgt_to_query[b, cols], rows)
        assert (tgt_to_query[b, n:] == -1).all()
        assert (query_to_tgt[b] >= 0).sum() == n
    with pytest.raises(ValueError, match="class_cost"):
        HungarianMatcher(class_cost="sigmoid")


def test_empty_targets_give_zero_box_losses_and_a_finite_focal_loss():
    empty = tuple(np.zeros_like(x) for x in _targets())
    outs, tensors = _criterion_inputs(5, empty)
    loss, terms = build_criterion()(tuple(tensors[:6]), *tensors[6:])
    terms = terms.asnumpy()
    assert np.isfinite(loss.asnumpy()) and np.isfinite(terms).all()
    assert terms[1] == 0.0 and terms[2] == 0.0
    # No matches: every query is a negative of every class, num_boxes clamps to 1.
    expected = _torch_set_losses(outs[0][-1], outs[1][-1], empty[0], empty[1], empty[2], 1.0)[0]
    np.testing.assert_allclose(terms[0], expected, rtol=1e-4)


def test_loss_terms_and_total_match_a_torch_transcription():
    targets = _targets()
    outs, tensors = _criterion_inputs(7, targets)
    logits, boxes, enc_logits, enc_boxes, fg_logits, _, mask, tgt_boxes, tgt_labels, tgt_valid = outs
    coco_ids = sorted(COCO_CATEGORY_NAMES)
    contiguous = np.vectorize(lambda c: coco_ids.index(c) if c in COCO_CATEGORY_NAMES else 0)(tgt_labels)
    num_boxes = float(tgt_valid.sum())

    loss, terms = build_criterion()(tuple(tensors[:6]), *tensors[6:])
    sets = [(logits[i], boxes[i]) for i in range(len(logits))] + [(enc_logits, enc_boxes)]
    per_set = [_torch_set_losses(lg, bx, tgt_boxes, contiguous, tgt_valid, num_boxes) for lg, bx in sets]
    np.testing.assert_allclose(terms.asnumpy(), per_set[-2], rtol=1e-4)
    select = _torch_select_loss(fg_logits, _np_fcos_labels(tgt_boxes, tgt_valid, mask))
    expected = sum(float(np.dot(t, [1.0, 5.0, 2.0])) for t in per_set) + 1.5 * select
    np.testing.assert_allclose(loss.asnumpy(), expected, rtol=1e-4)
    # Without auxiliary losses only the final layer and the foreground supervision remain.
    loss_final, _ = build_criterion(aux_loss=False)(tuple(tensors[:6]), *tensors[6:])
    np.testing.assert_allclose(loss_final.asnumpy(), float(np.dot(per_set[-2], [1.0, 5.0, 2.0])) + 1.5 * select,
                               rtol=1e-4)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, shared_data):
    tmp_path = tmp_path_factory.mktemp("focus_train")
    # Denoising is on (the tiny config's dn_number 20): the trainer trains through the detector's loss network.
    # One step per epoch here: the lr drops after 60 of the 100 steps. Seeded (initialization and denoising noise).
    cfg = load_config(TINY, ["train.checkpoint_interval=1000", "train.epochs=1000", "train.lr_drop=60"])
    ms.set_seed(cfg["train"]["seed"])
    opts = TrainOptions(str(shared_data / "coco_tiny"), str(tmp_path / "run"), str(tmp_path / "mr"),
                        max_steps=100, max_images=2)
    result = train(cfg, opts, RuntimeInfo("CPU", 0, 1, False))
    return cfg, result, tmp_path


def test_tiny_config_halves_its_loss_on_real_images(trained_tiny):
    _, result, _ = trained_tiny
    losses = np.asarray(result["losses"])
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() <= 0.5 * losses[:10].mean(), losses


def test_inference_graph_returns_raw_coco_category_ids(trained_tiny, shared_data):
    cfg, result, tmp_path = trained_tiny
    detector = build_model(cfg)
    load_pretrained(result["checkpoint"], detector.network, strict=True)
    net = detector.inference_network
    stats = evaluate_model(net, cfg, str(shared_data / "coco_tiny"), "train2017", str(tmp_path / "mr"),
                           output_dir=tmp_path / "eval", max_images=2)
    assert all(np.isfinite(v) for v in stats.values())
    detections = json.loads((tmp_path / "eval" / "bbox_results.json").read_text())
    assert len(detections) == 2 * cfg["model"]["num_select"]
    assert {d["category_id"] for d in detections} <= set(COCO_CATEGORY_NAMES)
    # The two training images were overfit: their ground-truth categories are among the top detections.
    with open(shared_data / "coco_tiny" / "annotations" / "instances_train2017.json", encoding="utf-8") as handle:
        gt = json.load(handle)
    image_ids = {d["image_id"] for d in detections}
    gt_ids = {a["category_id"] for a in gt["annotations"] if a["image_id"] in image_ids}
    top = sorted(detections, key=lambda d: -d["score"])[:10]
    assert {d["category_id"] for d in top} & gt_ids
    assert ms.get_context("mode") == ms.GRAPH_MODE


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "focus_detr").glob("*.yaml")))
def test_shipped_configs_load_with_the_published_position_settings(name):
    cfg = load_config(ROOT / "configs" / "focus_detr" / name)
    assert cfg["model"]["name"] == "focus_detr"
    if "_12ep" in name:
        assert (cfg["model"]["pos_temperature"], cfg["model"]["pos_offset"]) == (10000, -0.5)
    elif "ep" in name:
        assert (cfg["model"]["pos_temperature"], cfg["model"]["pos_offset"]) == (20, 0.0)
    if "r101" in name:
        assert cfg["model"]["backbone"] == "resnet101"


def test_r101_36ep_config_builds_a_real_resnet101():
    detector = build_model(load_config(ROOT / "configs" / "focus_detr" / "focus_detr_r101_4scale_36ep.yaml"))
    names = {p.name for p in detector.network.get_parameters()}
    assert "backbone.body.layer3.22.conv1.weight" in names
    assert "backbone.body.layer3.23.conv1.weight" not in names
