"""Convert one split of a COCO directory to MindRecord shards.

Usage (after ``pip install -e .``, which makes ``src`` importable)::

    python tools/coco_to_mindrecord.py --coco_path COCO --split train2017 --output_dir MR_DIR [--num_shards 8]

``COCO`` holds ``annotations/instances_{split}.json`` and the images in ``{split}/``. The annotations are
validated first (see ``src/data/coco.py`` for what is an error and what is skipped with a count); the shards
and the stamp that marks them complete are written only if everything succeeds, replacing an older set.
Training and evaluation also convert automatically on first use; this tool does it ahead of time.
"""

import argparse
import logging
import sys

from src.data.coco import CocoFormatError
from src.data.mindrecord import convert_coco_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco_path", required=True, help="COCO root with annotations/ and image folders")
    parser.add_argument("--split", required=True, help="split name, e.g. train2017 or val2017")
    parser.add_argument("--output_dir", required=True, help="folder for the MindRecord shards")
    parser.add_argument("--num_shards", type=int, default=1, help="number of MindRecord files (default 1)")
    parser.add_argument("--verify_images", action="store_true",
                        help="fully decode every image to catch truncated files (slow on full COCO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = convert_coco_split(args.coco_path, args.split, args.output_dir, args.num_shards,
                                   verify_decode=args.verify_images)
    except (CocoFormatError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
