"""Anchor generation for a single-level (C4) RPN, following detectron2 ``DefaultAnchorGenerator``.

detectron2 ``modeling/anchor_generator.py`` builds, for every feature-map location, one anchor per
(size, aspect ratio) pair: an axis-aligned box of area ``size**2`` and height/width ratio ``ratio``, centred on
the location's image-space position ``(x * stride + offset * stride, y * stride + offset * stride)``. DeFRCN
uses it on res4 (stride 16, offset 0) with sizes 32, 64, 128, 256, 512 and ratios 0.5, 1, 2 (15 anchors).

Ordering (needed to match the RPN head's outputs after permuting [N, A, H, W] to [N, H, W, A]): anchors are
listed location-major in row-major (y, then x) order; within a location the size varies slowest and the
ratio fastest. Anchors are computed once on the host with NumPy (they depend only on static shapes) and used as
constants in the graph.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes=DEFAULT_SIZES, ratios=DEFAULT_RATIOS) -> np.ndarray:
    """Anchors centred on the origin, one per (size, ratio).

    For area ``s**2`` and ratio ``r = h / w``: ``w = sqrt(s**2 / r)``, ``h = r * w``.

    Args:
        sizes: anchor side lengths in input-image pixels (sqrt of the area).
        ratios: height / width aspect ratios.

    Returns:
        float32 [len(sizes) * len(ratios), 4] xyxy, size-major order.
    """
    rows = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in ratios:
            w = np.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(rows, dtype=np.float64).astype(np.float32)


def grid_anchors(feature_hw, stride: int = 16, offset: float = 0.0, sizes=DEFAULT_SIZES,
                 ratios=DEFAULT_RATIOS) -> np.ndarray:
    """All anchors of a feature map of size ``feature_hw``.

    Args:
        feature_hw: (H, W) of the feature map.
        stride: feature stride in input pixels (16 for res4).
        offset: anchor centre offset in units of ``stride``, in [0, 1) (detectron2 ``ANCHOR_GENERATOR.OFFSET``,
            0 in DeFRCN).
        sizes, ratios: see :func:`cell_anchors`.

    Returns:
        float32 [H * W * A, 4] xyxy in input-image pixels; row ``(y * W + x) * A + a`` is anchor ``a`` at
        location (y, x).

    Raises:
        ValueError: for an offset outside [0, 1) or a non-positive feature size.
    """
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
    height, width = int(feature_hw[0]), int(feature_hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"feature size must be positive, got {feature_hw}")
    base = cell_anchors(sizes, ratios).astype(np.float64)
    shift_x = np.arange(width, dtype=np.float64) * stride + offset * stride
    shift_y = np.arange(height, dtype=np.float64) * stride + offset * stride
    grid_y, grid_x = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([grid_x.ravel(), grid_y.ravel(), grid_x.ravel(), grid_y.ravel()], axis=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4).astype(np.float32)
