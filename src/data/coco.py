"""Read a COCO-format detection directory into validated per-image records.

Layout (as distributed by cocodataset.org)::

    COCO/annotations/instances_{split}.json
    COCO/{split}/<file_name>

What is an error and what is skipped (decided per case, see ``load_coco_split``):

* errors (the data cannot be trusted or the run cannot continue): malformed JSON, a missing top-level key
  (``images``/``annotations``/``categories``), a malformed image or annotation entry, duplicate image ids,
  an annotation whose ``image_id`` is not listed, an unknown ``category_id``, a missing or unreadable image
  file, an image whose decoded size (after EXIF orientation) disagrees with the JSON ``height``/``width``.
* skipped with a count in ``CocoSummary`` and one warning (what detectron2/mmdetection users expect):
  boxes with ``w <= 0`` or ``h <= 0`` or non-finite values, and boxes lying entirely outside the image.
  Boxes that are only partly outside are kept as written and clamped later by the transforms, as DETR does.
* images without annotations are kept: evaluation needs every image, and DETR trains on them too (an empty
  target teaches every query "no object").
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.errors import InputError

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("images", "annotations", "categories")


class CocoFormatError(InputError, ValueError):
    """Raised when a COCO directory or annotation file cannot be used; the message names the culprit."""


@dataclass
class ImageRecord:
    """One image and its annotations.

    Attributes:
        image_id: COCO image id.
        file_name: path relative to the split's image folder.
        height: image height in pixels, as in the JSON (after EXIF orientation).
        width: image width in pixels, as in the JSON.
        boxes: float32 [n, 4], absolute pixels, **xywh** (top-left x, y, width, height) exactly as in the
            JSON (not clamped; the transforms clamp).
        category_ids: int32 [n], raw COCO category ids (1..90 for COCO).
        iscrowd: int32 [n], 0 or 1.
        annotation_ids: int64 [n], ids of the kept annotations (for error messages and debugging).
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    annotation_ids: np.ndarray


@dataclass
class CocoSummary:
    """Counts collected while reading a split."""

    num_images: int = 0
    num_boxes: int = 0
    num_crowd: int = 0
    images_without_boxes: int = 0
    skipped_degenerate: int = 0
    skipped_outside: int = 0
    partly_outside: int = 0
    skipped_examples: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.num_images} images, {self.num_boxes} boxes ({self.num_crowd} crowd), "
            f"{self.images_without_boxes} images without boxes, skipped {self.skipped_degenerate} boxes with "
            f"w or h <= 0 or non-finite values and {self.skipped_outside} boxes entirely outside their "
            f"image, "
            f"{self.partly_outside} boxes partly outside (kept, clamped by the transforms)"
        )


def annotation_file(coco_path, split: str) -> Path:
    """Path of ``instances_{split}.json`` under ``coco_path/annotations``."""
    return Path(coco_path) / "annotations" / f"instances_{split}.json"


def image_dir(coco_path, split: str) -> Path:
    """Folder holding the images of ``split``."""
    return Path(coco_path) / split


def load_coco_json(path) -> dict:
    """Load and structurally check a COCO instances file.

    Raises:
        CocoFormatError: file missing, malformed JSON (with line/column), not an object, or a required
            top-level key missing or not a list.
    """
    path = Path(path)
    if not path.is_file():
        raise CocoFormatError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"malformed JSON in {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{path} is not UTF-8 text: {e}") from e
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise CocoFormatError(f"{path}: missing top-level key '{key}' (a COCO instances file needs "
                                  f"{', '.join(REQUIRED_KEYS)})")
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{path}: top-level key '{key}' must be a list")
    return data


def load_categories(path) -> Dict[int, str]:
    """Map category id -> name from a COCO instances file.

    Raises:
        CocoFormatError: as ``load_coco_json``, or a category without an integer ``id`` or a ``name``,
            or a duplicate id.
    """
    return _parse_categories(load_coco_json(path), Path(path))


def _parse_categories(data: dict, path: Path) -> Dict[int, str]:
    categories: Dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise CocoFormatError(f"{path}: categories[{i}] needs an integer 'id' and a 'name', got {cat!r}")
        if cat["id"] in categories:
            raise CocoFormatError(f"{path}: duplicate category id {cat['id']}")
        categories[cat["id"]] = str(cat["name"])
    return categories


def _image_size_on_disk(path: Path, verify_decode: bool):
    """(height, width) after EXIF orientation, reading only the header unless ``verify_decode``."""
    try:
        with Image.open(path) as im:
            if verify_decode:
                im.load()
            width, height = im.size
            # Orientations 5..8 transpose the image, which is what cv2.IMREAD_COLOR applies at decode time.
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise CocoFormatError(f"cannot read image {path}: {e}. Replace the file or remove the image "
                              f"from the annotation file.") from e
    if orientation in (5, 6, 7, 8):
        return width, height
    return height, width


def load_coco_split(coco_path, split: str, check_files: bool = True, verify_decode: bool = False):
    """Read ``split`` of a COCO directory into validated records.

    Args:
        coco_path: COCO root (holding ``annotations/`` and ``{split}/``).
        split: split name, e.g. ``train2017``.
        check_files: check that every image file exists, is a readable image, and has the JSON size after
            EXIF orientation (reads headers only, cheap).
        verify_decode: also fully decode every image to catch truncated files (slow on full COCO).

    Returns:
        (records sorted by image id, categories dict id -> name, CocoSummary).

    Raises:
        CocoFormatError: for every error case listed in the module docstring; the message names the file,
            image id, annotation id or key.
    """
    return load_coco_annotations(annotation_file(coco_path, split), image_dir(coco_path, split), check_files,
                                 verify_decode)


def load_coco_annotations(ann_path, images_folder, check_files: bool = True, verify_decode: bool = False):
    """Read a COCO instances file whose images lie in ``images_folder`` (any layout, e.g. TFA's 2014 splits).

    Same checks, skips and outputs as :func:`load_coco_split`, which calls it with the 2017 layout's paths.

    Raises:
        CocoFormatError: see the module docstring.
    """
    ann_path = Path(ann_path)
    data = load_coco_json(ann_path)
    categories = _parse_categories(data, ann_path)
    images = _parse_images(data["images"], ann_path)
    summary = CocoSummary(num_images=len(images))
    per_image: Dict[int, list] = {image_id: [] for image_id in images}
    for i, ann in enumerate(data["annotations"]):
        parsed = _parse_annotation(ann, i, ann_path, images, categories, summary)
        if parsed is not None:
            per_image[parsed[0]].append(parsed[1:])

    folder = Path(images_folder)
    records = []
    for image_id in sorted(images):
        info = images[image_id]
        if check_files:
            check_image_file(folder, info["file_name"], info["height"], info["width"], verify_decode)
        anns = per_image[image_id]
        records.append(ImageRecord(
            image_id=image_id,
            file_name=info["file_name"],
            height=info["height"],
            width=info["width"],
            boxes=np.asarray([a[0] for a in anns], dtype=np.float32).reshape(-1, 4),
            category_ids=np.asarray([a[1] for a in anns], dtype=np.int32),
            iscrowd=np.asarray([a[2] for a in anns], dtype=np.int32),
            annotation_ids=np.asarray([a[3] for a in anns], dtype=np.int64),
        ))
        summary.num_boxes += len(anns)
        summary.num_crowd += sum(a[2] for a in anns)
        summary.images_without_boxes += int(not anns)
    skipped = summary.skipped_degenerate + summary.skipped_outside
    if skipped:
        logger.warning("%s: skipped %d invalid boxes (e.g. %s)", ann_path, skipped,
                       "; ".join(summary.skipped_examples))
    logger.info("%s: %s", ann_path, summary)
    return records, categories, summary


def _parse_images(entries: list, path: Path) -> Dict[int, dict]:
    images: Dict[int, dict] = {}
    for i, img in enumerate(entries):
        if not isinstance(img, dict):
            raise CocoFormatError(f"{path}: images[{i}] must be an object, got {img!r}")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise CocoFormatError(f"{path}: images[{i}] (id {img.get('id')!r}) has no '{key}'")
        image_id = img["id"]
        if not isinstance(image_id, int):
            raise CocoFormatError(f"{path}: images[{i}] id must be an integer, got {image_id!r}")
        if image_id in images:
            raise CocoFormatError(f"{path}: duplicate image id {image_id}")
        h, w = img["height"], img["width"]
        if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
            raise CocoFormatError(f"{path}: image id {image_id} has invalid size height={h!r} width={w!r}")
        images[image_id] = {"file_name": str(img["file_name"]), "height": h, "width": w}
    return images


def _parse_annotation(ann, index: int, path: Path, images: dict, categories: dict, summary: CocoSummary):
    """Returns (image_id, box, category_id, iscrowd, annotation_id) or None for a skipped box."""
    if not isinstance(ann, dict):
        raise CocoFormatError(f"{path}: annotations[{index}] must be an object, got {ann!r}")
    ann_id = ann.get("id", f"#{index}")
    for key in ("image_id", "bbox", "category_id"):
        if key not in ann:
            raise CocoFormatError(f"{path}: annotation id {ann_id} has no '{key}'")
    image_id = ann["image_id"]
    if image_id not in images:
        raise CocoFormatError(f"{path}: annotation id {ann_id} refers to image id {image_id!r}, "
                              f"which is not listed under 'images'")
    category_id = ann["category_id"]
    if category_id not in categories:
        raise CocoFormatError(f"{path}: annotation id {ann_id} (image id {image_id}) has unknown category id "
                              f"{category_id!r}; known ids: {sorted(categories)}")
    bbox = ann["bbox"]
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise CocoFormatError(f"{path}: annotation id {ann_id} (image id {image_id}) bbox must be 4 numbers "
                              f"[x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    where = f"annotation id {ann_id} (image id {image_id}) bbox {bbox}"
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        summary.skipped_degenerate += 1
        _note(summary, f"{where}: w or h <= 0 or not finite")
        return None
    width, height = images[image_id]["width"], images[image_id]["height"]
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        summary.skipped_outside += 1
        _note(summary, f"{where}: entirely outside the {width}x{height} image")
        return None
    if x < 0 or y < 0 or x + w > width or y + h > height:
        summary.partly_outside += 1
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise CocoFormatError(f"{path}: {where}: iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
    return image_id, (x, y, w, h), category_id, int(iscrowd), ann.get("id", -1)


def _note(summary: CocoSummary, text: str, limit: int = 5) -> None:
    if len(summary.skipped_examples) < limit:
        summary.skipped_examples.append(text)


def check_image_file(folder, file_name: str, height: int, width: int, verify_decode: bool = False) -> None:
    """Check that ``folder/file_name`` exists, is a readable image and is ``height`` x ``width`` after EXIF.

    Raises:
        CocoFormatError: missing or unreadable file, or another size; the message names the file.
    """
    path = Path(folder) / file_name
    if not path.is_file():
        raise CocoFormatError(f"image file missing: {path} (listed in the annotation file). Restore it or "
                              f"remove the image from the annotation file.")
    size = _image_size_on_disk(path, verify_decode)
    if size != (height, width):
        raise CocoFormatError(
            f"image {path}: size after EXIF orientation is {size[0]}x{size[1]} (h x w) but the annotation "
            f"file says {height}x{width}. Boxes must refer to the image as displayed; fix "
            f"the annotation or rotate the image pixels and drop the EXIF orientation tag.")
