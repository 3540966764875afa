"""Draw TFA-format K-shot few-shot splits from a COCO annotation file or a Pascal VOC devkit.

Usage (after ``pip install -e .``)::

    python tools/prepare_few_shot_split.py coco --annotations COCO/cocosplit/datasplit/trainvalno5k.json \
        --output_dir COCO/cocosplit [--seeds 0 10] [--shots 1 2 3 5 10 30] [--seed0_at_root]
    python tools/prepare_few_shot_split.py voc --devkit VOCdevkit --output_dir VOCdevkit/vocsplit \
        [--seeds 1 30] [--shots 1 2 3 5 10] [--image_sets 2007_trainval+2012_trainval] [--seed0_at_root]

``--seeds A B`` draws seeds A..B-1 (TFA's ``--seeds`` range). Seed S goes to ``seed{S}/``; seed 0 goes to
``seed0/`` (DeFRCN's layout) or, with ``--seed0_at_root``, to the output folder itself (TFA's layout). The
files are ``full_box_{K}shot_{class}_trainval.json`` (COCO) and ``box_{K}shot_{class}_train.txt`` (VOC);
train with them through ``data.few_shot_root`` / ``data.shot`` / ``data.seed``. Sampling follows TFA's
``prepare_coco_few_shot.py`` / ``prepare_voc_few_shot.py`` with a seeded generator (see
``src/data/few_shot_sampling.py`` for the semantics and the documented deviations). Everything is drawn
before the first file is written; each file is written atomically.
"""

import argparse
import logging
import sys

from src.cli import run
from src.data.coco import CocoFormatError
from src.data.few_shot_sampling import COCO_SHOTS, VOC_SHOTS, write_coco_few_shot, write_voc_few_shot
from src.data.voc import VocFormatError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    coco = sub.add_parser("coco", help="COCO instances JSON -> cocosplit")
    coco.add_argument("--annotations", required=True, help="COCO instances JSON to draw from")
    voc = sub.add_parser("voc", help="VOCdevkit -> vocsplit")
    voc.add_argument("--devkit", required=True, help="VOCdevkit folder holding VOC2007/ and VOC2012/")
    voc.add_argument("--image_sets", default="2007_trainval+2012_trainval",
                     help="image lists to draw from (default: 2007_trainval+2012_trainval, as TFA)")
    for p, shots, seeds in ((coco, COCO_SHOTS, (1, 10)), (voc, VOC_SHOTS, (1, 20))):
        p.add_argument("--output_dir", required=True, help="folder to write the split files into")
        p.add_argument("--seeds", type=int, nargs=2, default=list(seeds), metavar=("FIRST", "END"),
                       help=f"draw seeds FIRST..END-1 (default {seeds[0]} {seeds[1]}, TFA's)")
        p.add_argument("--shots", type=int, nargs="+", default=list(shots),
                       help=f"ascending shot counts (default {' '.join(map(str, shots))})")
        p.add_argument("--seed0_at_root", action="store_true",
                       help="write seed 0 into the output folder itself (TFA) instead of seed0/ (DeFRCN)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = range(args.seeds[0], args.seeds[1])
    if not seeds:
        print(f"error: --seeds {args.seeds[0]} {args.seeds[1]} is an empty range", file=sys.stderr)
        return 1
    try:
        if args.dataset == "coco":
            paths = write_coco_few_shot(args.annotations, args.output_dir, seeds, args.shots, args.seed0_at_root)
        else:
            paths = write_voc_few_shot(args.devkit, args.output_dir, seeds, args.shots, args.image_sets,
                                       args.seed0_at_root)
    except (CocoFormatError, VocFormatError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} split files under {args.output_dir}")
    return 0


if __name__ == "__main__":
    run(main)
