"""Write a COCO split as padded input binaries for offline inference (tools/infer_mindir.py, ascend310_infer).

``python preprocess.py --config CFG --coco_path COCO [--split val2017] --output_dir BIN_DIR [--image_size H W]
[--max_images N]``

For each image (eval transforms, batch 1, padded to the export shape): ``<id>_0.bin`` image float32
[1, 3, H, W], ``<id>_1.bin`` mask bool [1, H, W], ``<id>_2.bin`` orig_size int32 [1, 2], ``<id>.json``
(image id, original and resized size, scale), then ``manifest.txt`` / ``manifest.json`` listing the images in
order. ``<id>`` is the image id zero-padded to 12 digits. See src/deploy/bin_io.py.
"""

import argparse
from pathlib import Path

from src.cli import run
from src.config import load_config
from src.deploy.pipeline import preprocess_split


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--coco_path", required=True)
    parser.add_argument("--split", help="default: data.val_split of the config (val2017)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="the exported graph's input size; default: the largest data.eval_pad_buckets entry")
    parser.add_argument("--max_images", type=int, help="only the first N images (as eval.py --max_images)")
    parser.add_argument("--mindrecord_dir", default=None, help="default: OUTPUT_DIR/mindrecord")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    split = args.split or cfg["data"]["val_split"]
    mindrecord_dir = args.mindrecord_dir or str(Path(args.output_dir) / "mindrecord")
    stems = preprocess_split(cfg, args.coco_path, split, args.output_dir, mindrecord_dir, args.image_size,
                             args.max_images)
    print(f"wrote {len(stems)} images of {split} to {args.output_dir} (manifest.txt lists them in order)")
    return stems


if __name__ == "__main__":
    run(main)
