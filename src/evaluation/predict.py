"""Detections for image files: decode, eval resize/normalize, pad (or not), run the inference graph, format.

Used by ``infer.py``. Boxes come back in original-image pixels as COCO ``[x, y, w, h]``.
"""

from __future__ import annotations

from pathlib import Path

import mindspore as ms
import numpy as np

from src.data.catalog import coco_catalog
from src.data.dataset import BatchPadder
from src.data.transforms import build_eval_transform, decode_image


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 [H, W, 3] RGB with EXIF orientation applied.

    Raises:
        FileNotFoundError: the file does not exist. ValueError: it is not a decodable image (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return decode_image(path.read_bytes(), file_name=str(path))


def predict(net, image_rgb: np.ndarray, data_cfg: dict, score_threshold: float, catalog=None,
            unpadded: bool = False) -> list:
    """Run ``net`` (an :class:`src.models.contract.InferenceNet`, or with ``unpadded`` an
    :class:`src.evaluation.unpadded.UnpaddedInference`) on one image.

    Args:
        image_rgb: uint8 [H, W, 3] RGB.
        data_cfg: the config's ``data`` section (eval resize and pad buckets).
        score_threshold: keep detections with score >= this.
        catalog: :class:`src.data.catalog.Catalog` naming the category ids (default: COCO 2017's); an id outside
            it is named ``class_<id>``.
        unpadded: run the image at its resized size instead of padding it to a bucket.

    Returns:
        list of dicts ``{"bbox": [x, y, w, h] pixels, "score", "category_id", "category_name"}``, sorted by
        descending score.
    """
    names = (catalog or coco_catalog()).id_to_name()
    height, width = image_rgb.shape[:2]
    no_boxes = np.zeros((0, 4), np.float32)
    image, _, _ = build_eval_transform(data_cfg)(image_rgb, no_boxes, np.zeros((0,), np.int32), None)
    padder = BatchPadder(None if unpadded else data_cfg["eval_pad_buckets"], max_boxes=1)
    size = np.array([height, width], np.int32)
    batch = padder([image], [no_boxes], [np.zeros((0,), np.int32)], [0], [size], [np.array(image.shape[1:])])
    scores, labels, boxes = net(ms.Tensor(batch[0]), ms.Tensor(batch[1]), ms.Tensor(size[None]))
    scores, labels, boxes = scores.asnumpy()[0], labels.asnumpy()[0], boxes.asnumpy()[0]
    detections = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < score_threshold:
            break
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        category_id = int(labels[i])
        detections.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[i]),
                           "category_id": category_id,
                           "category_name": names.get(category_id, f"class_{category_id}")})
    return detections
