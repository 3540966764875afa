"""Adaptive ROIAlignV2 (src/ops/roi_align.py) against detectron2's ROIAlign_cpu.cpp, forward and backward.

The reference is written here from the C++ kernel's semantics (aligned=True, sampling_ratio=0): per RoI
``ceil(roi side / P)`` samples per bin side, ``-0.5`` offset, zero outside ``[-1, size]``, clamped to the border
inside, sum divided by the sample count. It is built as the explicit linear map from the feature map to the
pooled bins, so its forward is the map and its backward (gradient w.r.t. the features) is its transpose, as in
``ROIAlignBackwardFeature``. Both run in float64 on the float32 inputs; the MindSpore side runs in graph mode.
"""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.ops.roi_align import ROIAlignV2
from tests.roi_align_reference import bilinear_terms


def _reference_map(height, width, box, out, scale):
    """float64 [P, P, H, W]: pooled[c, p, q] = sum_hw map[p, q, h, w] * feature[c, h, w]."""
    x0, y0, x1, y1 = (float(c) * scale - 0.5 for c in box)
    roi_w, roi_h = x1 - x0, y1 - y0
    bin_h, bin_w = roi_h / out, roi_w / out
    grid_h, grid_w = math.ceil(roi_h / out), math.ceil(roi_w / out)
    count = max(grid_h * grid_w, 1)
    linear = np.zeros((out, out, height, width))
    for ph in range(out):
        for pw in range(out):
            for iy in range(grid_h):
                y = y0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    for row, col, weight in bilinear_terms(height, width, y, x):
                        linear[ph, pw, row, col] += weight / count
    return linear


class _FeatureGrad(nn.Cell):
    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler
        self.grad = ops.GradOperation(sens_param=True)

    def construct(self, features, boxes, sens):
        return self.grad(self.pooler)(features, boxes, sens)


# Box sides from 8 to 1000 px: tiny, thin, medium, huge, and ones hanging over the top-left and bottom-right.
BOXES = [[100.0, 120.0, 108.0, 128.0], [30.5, 400.2, 38.9, 440.0], [210.3, 95.7, 433.1, 331.9],
         [0.0, 0.0, 1000.0, 1000.0], [-40.0, -25.0, 180.0, 96.0], [700.0, 500.0, 1150.0, 1120.0]]


@pytest.mark.parametrize("name, out, scale, max_grid, chunk, shape, dynamic", [
    ("box head, W > H", 7, 1.0 / 16, 12, 128, (1, 3, 66, 72), False),
    ("box head, H > W, chunks of 4 RoIs", 7, 1.0 / 16, 12, 4, (2, 2, 72, 66), False),
    ("PCB, unknown H, W and box count as in pcb_eval", 1, 1.0 / 32, 64, 128, (1, 3, 36, 40), True),
])
def test_adaptive_pooling_matches_detectron2_kernel(name, out, scale, max_grid, chunk, shape, dynamic):
    assert ms.get_context("mode") == ms.GRAPH_MODE
    rng = np.random.default_rng(0)
    batch, channels, height, width = shape
    features = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    boxes = np.stack([np.roll(np.asarray(BOXES, np.float32), b, axis=0) for b in range(batch)])
    sens = rng.uniform(-1.0, 1.0, (batch * len(BOXES), channels, out, out)).astype(np.float32)

    pooler = ROIAlignV2(out, scale, 0, max_grid, chunk)
    grad_net = _FeatureGrad(pooler)
    if dynamic:  # the forward only: PCB does not back-propagate, and MindSpore refuses a dynamic sens
        pooler.set_inputs(Tensor(shape=[batch, channels, None, None], dtype=ms.float32),
                          Tensor(shape=[batch, None, 4], dtype=ms.float32))
    pooled = pooler(Tensor(features), Tensor(boxes)).asnumpy()
    grad = grad_net(Tensor(features), Tensor(boxes), Tensor(sens)).asnumpy()

    assert pooled.shape == (batch * len(BOXES), channels, out, out)
    expected_grad = np.zeros(shape)
    maps = {tuple(box): _reference_map(height, width, box, out, scale) for box in boxes[0]}
    for b in range(batch):
        for k, box in enumerate(boxes[b]):
            linear = maps[tuple(box)]
            row = b * len(BOXES) + k
            expected = np.einsum("pqhw,chw->cpq", linear, features[b].astype(np.float64))
            np.testing.assert_allclose(pooled[row], expected, rtol=0, atol=1e-5, err_msg=f"{name}: box {box}")
            expected_grad[b] += np.einsum("pqhw,cpq->chw", linear, sens[row].astype(np.float64))
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-5, err_msg=name)


def test_adaptive_grid_differs_from_a_fixed_two_by_two_grid_on_large_boxes():
    """The reference is sensitive to the grid: a fixed 2 x 2 grid misses it on a 1000 px box."""
    rng = np.random.default_rng(1)
    features = rng.uniform(-1.0, 1.0, (1, 2, 66, 72)).astype(np.float32)
    boxes = np.asarray([[[0.0, 0.0, 1000.0, 1000.0]]], np.float32)
    fixed = ROIAlignV2(7, 1.0 / 16, 2)(Tensor(features), Tensor(boxes)).asnumpy()[0]
    expected = np.einsum("pqhw,chw->cpq", _reference_map(66, 72, boxes[0, 0], 7, 1.0 / 16), features[0])
    assert np.abs(fixed - expected).max() > 1e-2


def test_bad_sampling_settings_are_refused():
    with pytest.raises(ValueError, match="sampling_ratio"):
        ROIAlignV2(7, 1.0 / 16, -1)
    with pytest.raises(ValueError, match="max_grid"):
        ROIAlignV2(7, 1.0 / 16, 0, 0)
    with pytest.raises(ValueError, match="chunk"):
        ROIAlignV2(7, 1.0 / 16, 0, 12, 0)
