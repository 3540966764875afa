"""detectron2 ``ROIAlignV2`` (aligned=True) on top of ``ops.ROIAlign``.

detectron2's aligned ROIAlign (``layers/roi_align.py``) maps a box ``(x0, y0, x1, y1)`` in image pixels to
the continuous feature-map interval ``[x0 * s - 0.5, x1 * s - 0.5]`` (s = spatial scale), does not clamp tiny
boxes to one feature pixel, splits it into ``P x P`` bins and averages a ``g x g`` grid of bilinear samples per
bin (zero outside [-1, size], clamped to the border inside).

``ops.ROIAlign`` with ``roi_end_mode=1`` maps ``[x0, x1]`` to ``[x0 * s, (x1 + 1) * s]`` and, like the aligned
mode, does not clamp the size (``roi_end_mode=0`` is the legacy mode that forces a minimum size of 1). Feeding
it boxes shifted by ``(-0.5 / s, -0.5 / s, -0.5 / s - 1, -0.5 / s - 1)`` gives exactly detectron2's interval;
tests/test_frcnn_ops.py checks this against a NumPy transcription of detectron2's formula.

Limitation: detectron2's ``sampling_ratio=0`` (used by DeFRCN) picks ``g = ceil(bin size)`` per box.
MindSpore's ``sample_num=0`` uses a rounded-down grid and returns NaN for bins smaller than one feature pixel,
so a fixed ``sample_num`` is required; with ``sample_num=2`` the result equals detectron2's adaptive one for
boxes whose bin size lies in (1, 2] feature pixels and differs slightly (another sampling density of the
same bilinear surface) otherwise.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops


class ROIAlignV2(nn.Cell):
    """Aligned ROIAlign with detectron2 coordinates.

    Args:
        output_size: P (7 in DeFRCN's box head).
        spatial_scale: feature stride reciprocal (1/16 for res4).
        sampling_ratio: samples per bin side (> 0; see the module docstring for why 0 is refused).

    Inputs:
        features: float32 [N, C, H, W].
        boxes: float32 [R, 4] xyxy in input-image pixels.
        batch_idx: int32 [R] image index of each box in ``features``.

    Outputs:
        float32 [R, C, P, P].

    Raises:
        ValueError: for ``sampling_ratio <= 0``.
    """

    def __init__(self, output_size: int, spatial_scale: float, sampling_ratio: int = 2):
        super().__init__()
        if sampling_ratio <= 0:
            raise ValueError("ops.ROIAlign's adaptive sampling (0) is not detectron2's; use a fixed sampling_ratio")
        self.roi_align = ops.ROIAlign(output_size, output_size, float(spatial_scale), sampling_ratio, 1)
        half = 0.5 / spatial_scale
        self.shift = Tensor([[-half, -half, -half - 1.0, -half - 1.0]], ms.float32)

    def construct(self, features: Tensor, boxes: Tensor, batch_idx: Tensor) -> Tensor:
        rois = ops.concat([ops.cast(batch_idx, ms.float32).expand_dims(-1), boxes + self.shift], axis=1)
        return self.roi_align(features, rois)
