"""DETR attention figures: per detection, the last decoder layer's cross-attention over the image; and the last
encoder layer's self-attention at chosen image points.

These are the figures of the DETR paper (Fig. 3 and 6) and of the facebookresearch/detr and csm-kr/detr_pytorch
READMEs. The detections and the attention weights come out of one MindSpore forward pass
(:class:`DetrAttentionNet`, which runs ``DETR.forward_with_attention``); heads are averaged for display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import cv2
import mindspore as ms
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from mindspore import nn

from src.data.catalog import coco_catalog
from src.data.dataset import BatchPadder
from src.data.transforms import build_eval_transform
from src.fileio import atomic_output

MAX_PANELS = 8
PANELS_PER_ROW = 4


class DetrAttentionNet(nn.Cell):
    """DETR and its post-process as one graph that also returns the attention weights.

    Args:
        network: a ``src.models.detr.model.DETR``.
        postprocess: ``src.models.detr.postprocess.PostProcess``.

    Inputs:
        image: float32 [1, 3, H, W], normalized, zero-padded; mask: bool [1, H, W], True on padding;
        orig_size: int32 or float32 [1, 2], (height, width) of the original image in pixels.

    Outputs:
        scores float32 [1, Q]; labels int32 [1, Q] (category ids); boxes float32 [1, Q, 4] xyxy in original pixels;
        feature_mask bool [1, h, w] (True on padding); encoder self-attention float32 [1, heads, h*w, h*w] and
        decoder cross-attention float32 [1, heads, Q, h*w] of the last layers (keys row-major over ``h x w``).
    """

    def __init__(self, network: nn.Cell, postprocess: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.postprocess = postprocess
        self.set_train(False)

    def construct(self, image, mask, orig_size):
        logits, boxes, feature_mask, encoder_weights, decoder_weights = self.network.forward_with_attention(image,
                                                                                                            mask)
        scores, labels, xyxy = self.postprocess(logits, boxes, orig_size.astype(ms.float32))
        return scores, labels, xyxy, feature_mask, encoder_weights, decoder_weights


def run_attention(net: DetrAttentionNet, image_rgb: np.ndarray, data_cfg: dict) -> dict:
    """Run ``net`` on one image (eval resize and normalization, padded to an eval bucket).

    Args:
        image_rgb: uint8 [H, W, 3] RGB.
        data_cfg: the config's ``data`` section.

    Returns:
        dict with ``scores`` [Q], ``labels`` [Q], ``boxes`` [Q, 4] (xyxy original pixels), ``decoder`` [Q, hv, wv]
        and ``encoder`` [hv * wv, hv, wv] (head-averaged weights over the feature cells of the unpadded image,
        ``hv x wv`` of them; encoder rows are query cells in row-major order).
    """
    height, width = image_rgb.shape[:2]
    no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
    image, _, _ = build_eval_transform(data_cfg)(image_rgb, no_boxes, no_labels, None)
    size = np.array([height, width], np.int32)
    batch = BatchPadder(data_cfg["eval_pad_buckets"], max_boxes=1)([image], [no_boxes], [no_labels], [0], [size],
                                                                   [np.array(image.shape[1:])])
    outputs = net(ms.Tensor(batch[0]), ms.Tensor(batch[1]), ms.Tensor(size[None]))
    scores, labels, boxes, feature_mask, encoder, decoder = (o.asnumpy()[0] for o in outputs)
    h, w = feature_mask.shape
    hv, wv = int((~feature_mask[:, 0]).sum()), int((~feature_mask[0]).sum())
    decoder = decoder.mean(axis=0).reshape(-1, h, w)[:, :hv, :wv]  # [Q, hv, wv]
    encoder = encoder.mean(axis=0).reshape(h, w, h, w)[:hv, :wv, :hv, :wv].reshape(hv * wv, hv, wv)
    return {"scores": scores, "labels": labels, "boxes": boxes, "decoder": decoder, "encoder": encoder}


def _overlay(ax, image_rgb: np.ndarray, heat: np.ndarray) -> None:
    """Show ``image_rgb`` with ``heat`` (any grid size, stretched to the image) on top."""
    height, width = image_rgb.shape[:2]
    ax.imshow(image_rgb)
    ax.imshow(cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST), cmap="jet",
              alpha=0.5)
    ax.set_axis_off()


def _figure(panels: int):
    cols = min(panels, PANELS_PER_ROW)
    rows = -(-panels // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), dpi=100)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")


def _ranked(result: dict, score_threshold: float) -> list:
    """Query indices with score >= ``score_threshold``, best first."""
    scores = result["scores"]
    return [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]


def plot_decoder_attention(image_rgb: np.ndarray, result: dict, path: Path, score_threshold: float,
                           max_panels: int = MAX_PANELS, class_names: Optional[Dict[int, str]] = None) -> int:
    """One panel per detection (score >= ``score_threshold``, best ``max_panels`` first): the image, the
    query's cross-attention as a heat map, and its box and class.

    Args:
        image_rgb: uint8 [H, W, 3]; result: :func:`run_attention`'s output; path: PNG to write.

    Returns:
        The number of panels drawn (no file is written when it is 0).
    """
    order = _ranked(result, score_threshold)[:max_panels]
    if not order:
        return 0
    fig, axes = _figure(len(order))
    for ax, q in zip(axes, order):
        _overlay(ax, image_rgb, result["decoder"][q])
        x0, y0, x1, y1 = result["boxes"][q]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=2))
        names = class_names if class_names is not None else coco_catalog().id_to_name()
        name = names.get(int(result["labels"][q]), f"class_{int(result['labels'][q])}")
        ax.set_title(f"query {q}: {name} {result['scores'][q]:.2f}", fontsize=10)
    _save(fig, path)
    return len(order)


def default_points(image_rgb: np.ndarray, result: dict, score_threshold: float, count: int = 3) -> list:
    """(x, y) pixel points for the encoder figure: the centres of the best ``count`` detections at or above
    ``score_threshold``, else points at a quarter and three quarters of the image."""
    height, width = image_rgb.shape[:2]
    order = _ranked(result, score_threshold)
    if not order:
        return [(width * fx, height * fy) for fy in (0.25, 0.75) for fx in (0.25, 0.75)][:count]
    return [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in result["boxes"][order[:count]]]


def plot_encoder_attention(image_rgb: np.ndarray, result: dict, points: Sequence, path: Path) -> None:
    """The image with ``points`` marked, then per point the encoder self-attention of the feature cell holding it.

    Args:
        points: (x, y) in original-image pixels inside the image.
    """
    height, width = image_rgb.shape[:2]
    hv, wv = result["encoder"].shape[1:]
    fig, axes = _figure(len(points) + 1)
    axes[0].imshow(image_rgb)
    axes[0].set_axis_off()
    axes[0].set_title("points", fontsize=10)
    for k, ((x, y), ax) in enumerate(zip(points, axes[1:])):
        row, col = int(y / height * hv), int(x / width * wv)
        axes[0].plot([x], [y], "o", color="red", markersize=8)
        axes[0].annotate(str(k + 1), (x, y), color="white", fontsize=12, xytext=(6, 6), textcoords="offset points")
        _overlay(ax, image_rgb, result["encoder"][row * wv + col])
        ax.plot([x], [y], "o", color="red", markersize=6)
        ax.set_title(f"point {k + 1} ({x:.0f}, {y:.0f})", fontsize=10)
    _save(fig, path)


def parse_point(text: str) -> tuple:
    """``"X,Y"`` (pixels) -> ``(x, y)`` floats.

    Raises:
        ValueError: not two comma-separated numbers (the message quotes the text).
    """
    parts = text.split(",")
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"attention point {text!r} must be X,Y in pixels, e.g. 320,240") from None
    return x, y


def write_attention_figures(net: DetrAttentionNet, image_rgb: np.ndarray, data_cfg: dict, out_dir: Path, stem: str,
                            score_threshold: float, points: Optional[Sequence] = None,
                            class_names: Optional[Dict[int, str]] = None) -> list:
    """Write ``<stem>_decoder_attention.png`` (if any detection passes the threshold) and
    ``<stem>_encoder_attention.png`` into ``out_dir``.

    Args:
        points: (x, y) pixels for the encoder figure; default :func:`default_points`.
        class_names: category id -> name for the panel titles (``Catalog.id_to_name``; default COCO 2017's).

    Returns:
        The paths written.

    Raises:
        ValueError: a point outside the image (the message gives the point and the image size); nothing is written.
    """
    height, width = image_rgb.shape[:2]
    for x, y in points or []:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"attention point ({x}, {y}) lies outside the {width}x{height} (w x h) image {stem!r}")
    result = run_attention(net, image_rgb, data_cfg)
    written = []
    decoder_path = Path(out_dir) / f"{stem}_decoder_attention.png"
    if plot_decoder_attention(image_rgb, result, decoder_path, score_threshold, class_names=class_names):
        written.append(decoder_path)
    encoder_path = Path(out_dir) / f"{stem}_encoder_attention.png"
    plot_encoder_attention(image_rgb, result,
                           points if points else default_points(image_rgb, result, score_threshold), encoder_path)
    written.append(encoder_path)
    return written
