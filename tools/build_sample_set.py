"""Build a small COCO-format quick-start set from the photographs shipped with scikit-image.

Usage (after ``pip install -e .``, which makes ``src`` importable)::

    python tools/build_sample_set.py --output_dir sample_coco

writes ``sample_coco/annotations/instances_sample.json`` and ``sample_coco/sample/*.jpg``: six real photographs
from ``skimage.data`` (astronaut, chelsea the cat, coffee, a motorcycle in a garage, the grayscale cameraman,
and a rocket on its pad with no COCO object), encoded as JPEG (quality 95; the cameraman stays grayscale).
The boxes come from the hand-made ``data/sample_annotations.json`` in this repository; ``area`` is the box
area since there are no masks. Use it as ``--coco_path sample_coco`` with split ``sample``.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from src.cli import run
from src.errors import InputError

ANNOTATIONS = Path(__file__).resolve().parents[1] / "data" / "sample_annotations.json"
SPLIT = "sample"


class SampleSetError(InputError, ValueError):
    """The installed scikit-image's photographs do not fit the annotations (another release changed them)."""


def _load_skimage(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    # stereo_motorcycle returns (left, right, disparity); the left view is the photograph annotated.
    return image[0] if isinstance(image, tuple) else image


def build_sample_set(output_dir, annotations=ANNOTATIONS, quality: int = 95) -> Path:
    """Write the sample set into ``output_dir``; returns the annotation file path.

    Raises:
        SampleSetError: an skimage image's size differs from the one the boxes were drawn on (another
            scikit-image release changed it), naming the image.
    """
    with open(annotations, encoding="utf-8") as f:
        spec = json.load(f)
    output_dir = Path(output_dir)
    (output_dir / SPLIT).mkdir(parents=True, exist_ok=True)
    (output_dir / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for entry in spec["images"]:
        pixels = _load_skimage(entry["skimage"])
        if pixels.shape[:2] != (entry["height"], entry["width"]):
            raise SampleSetError(f"skimage.data.{entry['skimage']} is {pixels.shape[0]}x{pixels.shape[1]} (h x w), "
                             f"but {annotations} was drawn on {entry['height']}x{entry['width']}")
        file_name = f"{entry['skimage']}.jpg"
        Image.fromarray(pixels).save(output_dir / SPLIT / file_name, quality=quality)
        images.append({"id": entry["id"], "file_name": file_name, "height": entry["height"],
                       "width": entry["width"]})
        for box in entry["boxes"]:
            x, y, w, h = box["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": entry["id"], "category_id": box["category_id"],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    out = output_dir / "annotations" / f"instances_{SPLIT}.json"
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": spec["categories"]}, f, indent=1)
    return out


def main(argv=None) -> None:
    """Build the set; a photograph that does not fit its boxes is reported by ``src.cli.run`` in one line (exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder to create the COCO-format set in")
    args = parser.parse_args(argv)
    print(build_sample_set(args.output_dir))


if __name__ == "__main__":
    run(main)
