"""detectron2 ``ROIAlignV2`` (aligned=True), with detectron2's adaptive sampling grid or a fixed one.

detectron2's aligned ROIAlign (``layers/roi_align.py``, kernel ``layers/csrc/ROIAlign/ROIAlign_cpu.cpp``) maps a
box ``(x0, y0, x1, y1)`` in image pixels to the continuous feature-map interval ``[x0 * s - 0.5, x1 * s - 0.5]``
(s = spatial scale), does not clamp tiny boxes to one feature pixel, splits it into ``P x P`` bins and averages a
``gy x gx`` grid of bilinear samples per bin: sample ``i`` of bin ``p`` lies at ``start + p * bin + (i + 0.5) *
bin / g``; a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` counts as zero, inside it is clamped to
``[0, H - 1]`` (``[0, W - 1]``); the sum is divided by ``gy * gx``. DeFRCN uses ``sampling_ratio=0``:
``gy = ceil(roi_height / P)`` and ``gx = ceil(roi_width / P)``, per RoI.

Adaptive mode (``sampling_ratio=0``, the default). Every step above factors into a y part and an x part, so the
pooled value of bin (p, q) is ``sum_h sum_w Ay[p, h] * F[h, w] * Ax[q, w]``, where ``Ay[p, h]`` is the bilinear
weight of feature row h summed over the bin's valid y samples and divided by gy (likewise Ax). The weights are
built with static shapes: ``max_grid`` sample positions per bin side are always computed and the ones at index
``>= g`` (this RoI's own count) get weight zero. Two batched matrix products then pool every RoI of an image
(the larger of H and W is contracted first, which keeps the intermediate ``[B, K * P, C * min(H, W)]``; RoIs
are pooled ``chunk`` at a time to bound it; with dynamic shapes, as PCB compiles with unknown H, W and box
count, H is contracted first and the RoIs are pooled in one piece). This
equals detectron2 for every RoI with ``ceil(side / P) <= max_grid`` (box side up to ``max_grid * P / s``
pixels: 1344 px for the box head's 12 x 7 at 1/16, 2048 px for PCB's 64 x 1 at 1/32); larger RoIs use
``max_grid`` samples per bin side. Gradients flow to the features only (boxes are constants, as in detectron2).

Fixed mode (``sampling_ratio > 0``): ``ops.ROIAlign`` with ``roi_end_mode=1`` maps ``[x0, x1]`` to
``[x0 * s, (x1 + 1) * s]`` without clamping the size; boxes shifted by ``(-0.5 / s, -0.5 / s, -0.5 / s - 1,
-0.5 / s - 1)`` give detectron2's interval with a fixed ``g x g`` grid (MindSpore's own ``sample_num=0`` rounds
the grid down and returns NaN for bins under one feature pixel, so it is not used).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops import functional as F


class ROIAlignV2(nn.Cell):
    """Aligned ROIAlign with detectron2 coordinates (module docstring).

    Args:
        output_size: P (7 in DeFRCN's box head, 1 in PCB).
        spatial_scale: feature stride reciprocal (1/16 for res4).
        sampling_ratio: 0 for detectron2's adaptive ``ceil(roi side / P)`` samples per bin side, or a fixed count.
        max_grid: adaptive mode only: the most samples per bin side (static shapes); see the module docstring.
        chunk: adaptive mode only: RoIs per image pooled by one pair of matrix products (bounds the
            ``[B, chunk * P, C * min(H, W)]`` intermediate; 128 halves the peak memory of 1000 proposals).

    Inputs:
        features: float32 [B, C, H, W].
        boxes: float32 [B, K, 4] xyxy in input-image pixels, K boxes per image.

    Outputs:
        float32 [B * K, C, P, P], image-major.

    Raises:
        ValueError: for ``sampling_ratio < 0`` or, in adaptive mode, ``max_grid < 1``.
    """

    def __init__(self, output_size: int, spatial_scale: float, sampling_ratio: int = 0, max_grid: int = 12,
                 chunk: int = 128):
        super().__init__()
        if sampling_ratio < 0:
            raise ValueError(f"sampling_ratio must be 0 (adaptive) or positive, got {sampling_ratio}")
        if sampling_ratio == 0 and (max_grid < 1 or chunk < 1):
            raise ValueError(f"max_grid and chunk must be positive for the adaptive grid, got {max_grid}, {chunk}")
        self.adaptive = sampling_ratio == 0
        self.output_size = int(output_size)
        self.scale = float(spatial_scale)
        self.max_grid = int(max_grid)
        self.chunk = int(chunk)
        if not self.adaptive:
            self.roi_align = ops.ROIAlign(output_size, output_size, self.scale, sampling_ratio, 1)
        half = 0.5 / spatial_scale
        self.shift = Tensor([[-half, -half, -half - 1.0, -half - 1.0]], ms.float32)

    def _axis_weights(self, start: Tensor, length: Tensor, size: int) -> Tensor:
        """[B, K, P, size]: weight of each feature row (or column) in each bin, summed over the bin's samples."""
        out, grid_max = self.output_size, self.max_grid
        grid_raw = ops.ceil(length / out)
        grid = ops.clamp(grid_raw, 1.0, float(grid_max)).expand_dims(-1).expand_dims(-1)
        has_samples = (grid_raw >= 1.0).astype(ms.float32).expand_dims(-1).expand_dims(-1)
        bin_size = (length / out).expand_dims(-1).expand_dims(-1)
        bins = ops.arange(out).astype(ms.float32).reshape(1, 1, out, 1)
        steps = ops.arange(grid_max).astype(ms.float32).reshape(1, 1, 1, grid_max)
        pos = start.expand_dims(-1).expand_dims(-1) + bins * bin_size + (steps + 0.5) * bin_size / grid
        keep = (steps < grid).astype(ms.float32) * has_samples
        # size may be a dynamic scalar (PCB runs with unknown H and W): keep it a tensor.
        limit = ops.scalar_to_tensor(size, ms.float32)
        keep = keep * ((pos >= -1.0) & (pos <= limit)).astype(ms.float32)
        pos = ops.maximum(pos, 0.0)
        low = ops.floor(pos)
        at_edge = low >= limit - 1.0
        low = ops.minimum(low, limit - 1.0)
        high = ops.where(at_edge, low, low + 1.0)
        frac = ops.where(at_edge, ops.zeros_like(pos), pos - low)
        index = ops.arange(size).astype(ms.float32)
        weights = ((1.0 - frac).expand_dims(-1) * (index == low.expand_dims(-1)).astype(ms.float32)
                   + frac.expand_dims(-1) * (index == high.expand_dims(-1)).astype(ms.float32))
        return (weights * keep.expand_dims(-1)).sum(axis=3) / grid

    def _adaptive(self, features: Tensor, boxes: Tensor) -> Tensor:
        num, chunk = boxes.shape[1], self.chunk
        if not F.isconstant(num):  # a dynamic box count is pooled in one piece
            return self._adaptive_chunk(features, boxes)
        if num <= chunk:
            return self._adaptive_chunk(features, boxes)
        pieces = [self._adaptive_chunk(features, boxes[:, start:start + chunk]) for start in range(0, num, chunk)]
        batch = boxes.shape[0]
        out = self.output_size
        pooled = ops.concat([p.reshape(batch, -1, features.shape[1], out, out) for p in pieces], axis=1)
        return pooled.reshape(batch * num, features.shape[1], out, out)

    def _adaptive_chunk(self, features: Tensor, boxes: Tensor) -> Tensor:
        batch, channels, height, width = features.shape
        out = self.output_size
        coords = boxes * self.scale - 0.5
        weight_y = self._axis_weights(coords[..., 1], coords[..., 3] - coords[..., 1], height)  # [B, K, P, H]
        weight_x = self._axis_weights(coords[..., 0], coords[..., 2] - coords[..., 0], width)   # [B, K, P, W]
        if F.isconstant(height) and F.isconstant(width):
            if width >= height:
                # [B, K*P, W] @ [B, W, C*H] -> [B*K, P(x), C, H]; then contract H with weight_y.
                feat = features.transpose(0, 3, 1, 2).reshape(batch, width, -1)
                first = ops.bmm(weight_x.reshape(batch, -1, width), feat)
                first = first.reshape(-1, out * channels, height)
                pooled = ops.bmm(first, weight_y.reshape(-1, out, height).transpose(0, 2, 1))
                return pooled.reshape(-1, out, channels, out).transpose(0, 2, 3, 1)
        # H first (also when H and W are dynamic).
        feat = features.transpose(0, 2, 1, 3).reshape(batch, height, -1)
        first = ops.bmm(weight_y.reshape(batch, -1, height), feat)
        first = first.reshape(-1, out * channels, width)
        pooled = ops.bmm(first, weight_x.reshape(-1, out, width).transpose(0, 2, 1))
        return pooled.reshape(-1, out, channels, out).transpose(0, 2, 1, 3)

    def construct(self, features: Tensor, boxes: Tensor) -> Tensor:
        boxes = ops.stop_gradient(boxes)
        if self.adaptive:
            return self._adaptive(features, boxes)
        batch, num = boxes.shape[0], boxes.shape[1]
        batch_idx = ops.arange(batch).astype(ms.float32).reshape(batch, 1, 1).broadcast_to((batch, num, 1))
        rois = ops.concat([batch_idx, boxes + self.shift], axis=2).reshape(batch * num, 5)
        return self.roi_align(features, rois)
