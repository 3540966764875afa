"""Draw detections on an image with OpenCV (boxes, class names and scores)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np


def _color(category_id: int) -> tuple:
    # Golden-ratio hue steps give neighbouring ids clearly different colours.
    r, g, b = colorsys.hsv_to_rgb((category_id * 0.618034) % 1.0, 0.85, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_detections(image_rgb: np.ndarray, detections: list) -> np.ndarray:
    """Return a copy of ``image_rgb`` (uint8 [H, W, 3] RGB) with each detection drawn.

    Args:
        detections: dicts with ``bbox`` [x, y, w, h] in pixels, ``score`` in [0, 1], ``category_id``
            and ``category_name``.
    """
    canvas = np.ascontiguousarray(image_rgb.copy())
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for det in detections:
        x, y, w, h = (int(round(v)) for v in det["bbox"])
        color = _color(det["category_id"])
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thickness)
        text = f"{det['category_name']} {det['score']:.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(0, y - th - baseline - 2)
        cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + baseline + 2), color, -1)
        cv2.putText(canvas, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
