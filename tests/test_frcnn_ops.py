"""Faster R-CNN ops for DeFRCN: anchors, box coder, NMS and aligned ROIAlign, each against an independent
reference written here (definitions, a torch transcription of detectron2's formulas, NumPy greedy NMS,
NumPy bilinear ROIAlign)."""

import math

import numpy as np
import pytest
import torch
from mindspore import Tensor, nn

from src.ops.anchors import grid_anchors
from src.ops.box_coder import ROI_WEIGHTS, RPN_WEIGHTS, decode_boxes, encode_boxes
from src.ops.nms import NMS, BatchedNMS
from src.ops.roi_align import ROIAlignV2
from tests.roi_align_reference import bilinear_terms

SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)


# ----------------------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_anchors_at_known_positions(offset):
    height, width, stride = 5, 7, 16
    anchors = grid_anchors((height, width), stride, offset, SIZES, RATIOS)
    assert anchors.shape == (height * width * 15, 4) and anchors.dtype == np.float32
    for y, x, s_idx, r_idx in [(0, 0, 0, 0), (0, 6, 2, 1), (4, 3, 4, 2), (2, 5, 1, 0), (4, 6, 3, 1)]:
        size, ratio = SIZES[s_idx], RATIOS[r_idx]
        # Box of area size^2 with h / w = ratio centred on the location's image position.
        w = size / math.sqrt(ratio)
        h = size * math.sqrt(ratio)
        cx, cy = (x + offset) * stride, (y + offset) * stride
        row = (y * width + x) * 15 + s_idx * 3 + r_idx
        np.testing.assert_allclose(anchors[row], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6,
                                   atol=1e-4)


def test_anchor_areas_and_ratios():
    anchors = grid_anchors((3, 4)).astype(np.float64).reshape(3 * 4, 15, 4)
    w = anchors[..., 2] - anchors[..., 0]
    h = anchors[..., 3] - anchors[..., 1]
    np.testing.assert_allclose(w * h, np.repeat(np.square(SIZES), 3)[None].repeat(12, 0), rtol=1e-5)
    np.testing.assert_allclose(h / w, np.tile(RATIOS, 5)[None].repeat(12, 0), rtol=1e-5)
    with pytest.raises(ValueError):
        grid_anchors((3, 4), offset=1.0)


# ----------------------------------------------------------------------------------------------- box coder
def _torch_get_deltas(src, tgt, weights):
    """detectron2 Box2BoxTransform.get_deltas, transcribed from its formula."""
    wx, wy, ww, wh = weights
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    sx, sy = src[:, 0] + 0.5 * sw, src[:, 1] + 0.5 * sh
    tw, th = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
    tx, ty = tgt[:, 0] + 0.5 * tw, tgt[:, 1] + 0.5 * th
    return torch.stack([wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * torch.log(tw / sw), wh * torch.log(th / sh)],
                       dim=1)


def _random_boxes(rng, n, scale=600.0, min_size=2.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(min_size, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


class _Encode(nn.Cell):
    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def construct(self, src, tgt):
        return encode_boxes(src, tgt, self.weights)


class _Decode(nn.Cell):
    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def construct(self, deltas, src):
        return decode_boxes(deltas, src, self.weights)


@pytest.mark.parametrize("weights", [RPN_WEIGHTS, ROI_WEIGHTS])
def test_box_coder_matches_torch_and_round_trips(weights):
    rng = np.random.default_rng(0)
    src, tgt = _random_boxes(rng, 64), _random_boxes(rng, 64)
    deltas = _Encode(weights)(Tensor(src), Tensor(tgt)).asnumpy()
    expected = _torch_get_deltas(torch.from_numpy(src).double(), torch.from_numpy(tgt).double(), weights).numpy()
    np.testing.assert_allclose(deltas, expected, rtol=1e-4, atol=1e-4)
    decoded = _Decode(weights)(Tensor(deltas), Tensor(src)).asnumpy()
    np.testing.assert_allclose(decoded, tgt, rtol=1e-4, atol=1e-2)


def test_decode_class_specific_and_clamp():
    rng = np.random.default_rng(1)
    src = _random_boxes(rng, 10)
    deltas = rng.standard_normal((10, 3 * 4)).astype(np.float32)
    deltas[0, 2] = 50.0  # exp(50 / 5) would be far past the clamp
    out = _Decode(ROI_WEIGHTS)(Tensor(deltas), Tensor(src)).asnumpy().reshape(10, 3, 4)
    w = (src[:, 2] - src[:, 0]).astype(np.float64)
    h = (src[:, 3] - src[:, 1]).astype(np.float64)
    cx, cy = src[:, 0] + 0.5 * w, src[:, 1] + 0.5 * h
    d = deltas.reshape(10, 3, 4).astype(np.float64)
    clamp = math.log(1000.0 / 16)
    pw = np.exp(np.minimum(d[..., 2] / 5, clamp)) * w[:, None]
    ph = np.exp(np.minimum(d[..., 3] / 5, clamp)) * h[:, None]
    px = d[..., 0] / 10 * w[:, None] + cx[:, None]
    py = d[..., 1] / 10 * h[:, None] + cy[:, None]
    expected = np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], axis=-1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(out[0, 0, 2] - out[0, 0, 0], 1000.0 / 16 * w[0], rtol=1e-4)


# ----------------------------------------------------------------------------------------------- NMS
def _numpy_nms(boxes, scores, thr):
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        xx0 = np.maximum(boxes[i, 0], boxes[:, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[:, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[:, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > thr
    return np.array(keep, dtype=np.int64)


def _clustered_boxes(rng, n):
    # Jittered copies of a few base boxes, so that many pairs overlap at all IoU levels.
    base = _random_boxes(rng, 12, scale=300.0, min_size=20.0)
    picks = base[rng.integers(0, 12, n)]
    jitter = rng.normal(0, 6.0, (n, 4)).astype(np.float32)
    boxes = picks + jitter
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
    return boxes.astype(np.float32)


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_nms_matches_numpy_greedy(thr):
    rng = np.random.default_rng(int(thr * 10))
    n, max_out = 150, 100
    boxes = _clustered_boxes(rng, n)
    scores = rng.permutation(n).astype(np.float32) / n  # distinct scores: no tie ambiguity
    valid = np.ones(n, bool)
    valid[-20:] = False  # padding rows must neither be kept nor suppress
    keep, keep_valid = NMS(thr, max_out)(Tensor(boxes), Tensor(scores), Tensor(valid))
    keep, keep_valid = keep.asnumpy(), keep_valid.asnumpy()
    expected = _numpy_nms(boxes[:-20], scores[:-20], thr)
    assert 0 < len(expected) < max_out
    assert keep_valid.sum() == len(expected)
    assert keep_valid[: len(expected)].all()
    np.testing.assert_array_equal(keep[: len(expected)], expected)


def test_batched_nms_is_per_class():
    rng = np.random.default_rng(5)
    n = 90
    boxes = _clustered_boxes(rng, n)
    scores = rng.permutation(n).astype(np.float32) / n
    labels = rng.integers(0, 3, n).astype(np.int32)
    keep, keep_valid = BatchedNMS(0.5, n)(Tensor(boxes), Tensor(scores), Tensor(labels), Tensor(np.ones(n, bool)))
    got = set(keep.asnumpy()[keep_valid.asnumpy()].tolist())
    expected = set()
    for c in range(3):
        idx = np.nonzero(labels == c)[0]
        expected |= set(idx[_numpy_nms(boxes[idx], scores[idx], 0.5)].tolist())
    assert got == expected


# ----------------------------------------------------------------------------------------------- ROIAlign
def _bilinear(f, y, x):
    """detectron2 ROIAlign bilinear sample of the 2-D map ``f`` at (y, x)."""
    return sum(weight * f[row, col] for row, col, weight in bilinear_terms(*f.shape, y, x))


def _roi_align_v2(f, box, out, scale, grid):
    x0, y0, x1, y1 = (c * scale - 0.5 for c in box)
    bw, bh = (x1 - x0) / out, (y1 - y0) / out
    res = np.zeros((out, out))
    for i in range(out):
        for j in range(out):
            samples = [_bilinear(f, y0 + i * bh + (iy + 0.5) * bh / grid, x0 + j * bw + (ix + 0.5) * bw / grid)
                       for iy in range(grid) for ix in range(grid)]
            res[i, j] = np.mean(samples)
    return res


def test_roi_align_v2_on_linear_ramp_is_analytic():
    height, width, scale, out = 40, 48, 1.0 / 16, 7
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ramp = (0.5 * xs + 2.0 * ys + 3.0).astype(np.float32)
    boxes = np.array([[80.0, 96.0, 400.0, 320.0], [33.3, 41.7, 90.2, 300.9], [200.0, 150.0, 212.0, 160.0]],
                     np.float32)
    result = ROIAlignV2(out, scale, 2)(Tensor(ramp[None, None]), Tensor(boxes[None])).asnumpy()[:, 0]
    for k, (bx0, by0, bx1, by1) in enumerate(boxes.astype(np.float64)):
        # Aligned mapping: box [x0, x1] covers feature coordinates [x0 * s - 0.5, x1 * s - 0.5]; a bilinear
        # sample of a linear function is exact, so each bin averages to the ramp at the bin centre.
        fx0, fy0 = bx0 * scale - 0.5, by0 * scale - 0.5
        cx = fx0 + (np.arange(out) + 0.5) * (bx1 - bx0) * scale / out
        cy = fy0 + (np.arange(out) + 0.5) * (by1 - by0) * scale / out
        expected = 0.5 * cx[None, :] + 2.0 * cy[:, None] + 3.0
        np.testing.assert_allclose(result[k], expected, rtol=1e-5, atol=1e-4)


def test_roi_align_v2_matches_detectron2_formula():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 2, 20, 24)).astype(np.float32)
    # Inside, partly outside the image, tiny (smaller than one feature pixel); three boxes per image.
    boxes = np.array([[[3.0, 5.0, 50.0, 70.0], [-20.0, -5.0, 60.0, 30.0], [40.0, 60.0, 200.0, 90.0]],
                      [[10.3, 2.2, 150.7, 99.1], [100.0, 100.0, 104.0, 103.0], [300.0, 250.0, 390.0, 330.0]]],
                     np.float32)
    result = ROIAlignV2(7, 1.0 / 16, 2)(Tensor(feats), Tensor(boxes)).asnumpy()
    for b in range(2):
        for k in range(3):
            for c in range(2):
                expected = _roi_align_v2(feats[b, c].astype(np.float64), boxes[b, k], 7, 1.0 / 16, 2)
                np.testing.assert_allclose(result[3 * b + k, c], expected, rtol=1e-4, atol=1e-5)
