"""Images/s of the training data pipeline (MindRecord read, decode, augmentation, padding into batches), with and
without Mosaic, on real images.

    python -m benchmarks.bench_data_pipeline --coco_path ../shared/data/coco_tiny

Cases: DETR's multi-scale recipe (``configs/detr/detr_r50.yaml``), the fixed-1024 recipe
(``configs/detr/detr_r50_1024_mosaic.yaml``) without Mosaic, with Mosaic on half the images (its setting) and on
every image. Each case reads the train split for ``--epochs`` epochs at the config's batch size and worker count;
the first batch (pipeline start-up) is not timed. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from src.config import load_config
from src.data.dataset import create_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detr"
CASES = [
    ("multi-scale 480-800 (detr_r50.yaml)", "detr_r50.yaml", []),
    ("fixed 1024x1024, no Mosaic", "detr_r50_1024_mosaic.yaml", ["data.mosaic_prob=0.0"]),
    ("fixed 1024x1024, Mosaic p=0.5 (the recipe)", "detr_r50_1024_mosaic.yaml", []),
    ("fixed 1024x1024, Mosaic p=1.0", "detr_r50_1024_mosaic.yaml", ["data.mosaic_prob=1.0"]),
]


def images_per_second(coco_path: str, config: str, overrides: list, mindrecord_dir: str, epochs: int,
                      batch_size: int) -> float:
    """Training images per second the pipeline of ``config`` delivers, after its first batch."""
    cfg = load_config(CONFIGS / config, overrides)
    dataset = create_dataset(coco_path, cfg["data"], "train", mindrecord_dir, batch_size)
    iterator = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    images, start = 0, None
    for _ in range(epochs):
        for batch in iterator:
            if start is None:
                start = time.perf_counter()
                continue
            images += batch[0].shape[0]
    return images / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco_path", default="../shared/data/coco_tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as mindrecord_dir:
        rows = [(name, images_per_second(args.coco_path, config, overrides, mindrecord_dir, args.epochs,
                                         args.batch_size)) for name, config, overrides in CASES]
    print(f"| training data pipeline, batch {args.batch_size} | images/s |")
    print("| --- | --- |")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    main()
