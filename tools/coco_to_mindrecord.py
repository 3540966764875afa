"""Convert one split of a COCO directory, or the data source of any config, to MindRecord shards.

Usage (after ``pip install -e .``, which makes ``src`` importable)::

    python tools/coco_to_mindrecord.py --coco_path COCO --split train2017 --output_dir MR_DIR [--num_shards 8]
    python tools/coco_to_mindrecord.py --coco_path ROOT --config configs/defrcn/X.yaml --which train \
        --output_dir MR_DIR [--set data.shot=5 ...]

The first form converts ``annotations/instances_{split}.json`` with the images in ``{split}/``, every class of
the file and every image, to the set ``coco_{split}_all`` (``src.data.sources.coco_split_source``): the set that
``eval.py`` and ``preprocess.py`` read for that split with a COCO config, and that DETR and Focus-DETR configs
(``data.filter_empty: false``) train on. The second converts what a config trains (``--which train``) or
evaluates (``--which val``) on, under the names training and evaluation use: COCO-format splits (restricted to a
DeFRCN config's classes), TFA few-shot splits, or VOC-format image sets (``ROOT`` is then the VOCdevkit folder);
see ``src/data/sources.py``. Either way the annotations are validated first (``src/data/coco.py`` says what is
an error and what is skipped with a count); the shards and the stamp that marks them complete are written only
if everything succeeds, replacing an older set. Training and evaluation also convert automatically on first
use; this tool does it ahead of time.
"""

import argparse
import logging
import sys

from src.cli import run
from src.config import ConfigError, load_config
from src.data.coco import CocoFormatError
from src.data.few_shot import FewShotSplitError
from src.data.mindrecord import convert_source
from src.data.sources import build_source, coco_split_source
from src.data.voc import VocFormatError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco_path", required=True, help="dataset root: COCO folder, or VOCdevkit for VOC configs")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", help="COCO split name, e.g. train2017 or val2017")
    what.add_argument("--config", help="a config; converts its data source (see --which)")
    parser.add_argument("--which", choices=("train", "val"), default="train",
                        help="with --config: the training (default) or the evaluation set")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --config: config override, e.g. data.shot=5 (repeatable)")
    parser.add_argument("--output_dir", required=True, help="folder for the MindRecord shards")
    parser.add_argument("--num_shards", type=int, default=1, help="number of MindRecord files (default 1)")
    parser.add_argument("--verify_images", action="store_true",
                        help="fully decode every image to catch truncated files (slow on full COCO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.split is not None:
            source = coco_split_source(args.coco_path, args.split)
        else:
            source = build_source(args.coco_path, load_config(args.config, args.overrides)["data"], args.which)
        paths = convert_source(source, args.output_dir, args.num_shards, verify_decode=args.verify_images)
    except (CocoFormatError, VocFormatError, FewShotSplitError, ConfigError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    run(main)
