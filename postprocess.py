"""Score offline-inference outputs with pycocotools: prints the 12-line COCOeval table and the metrics JSON.

``python postprocess.py --config CFG --result_dir RESULT_DIR --ann_file ANN_FILE [--output_dir OUT]``

Reads ``RESULT_DIR/manifest.txt`` and, per image, ``<id>_0.bin`` scores, ``<id>_1.bin`` labels and
``<id>_2.bin`` boxes. The boxes are already in original-image pixels (xyxy): the exported graph contains the
post-process, which scales by the orig_size input, so nothing is mapped back here. Labels are COCO category ids
for every model; detections are kept or dropped by eval.py's rule (DETR's no-object label 91 and negative labels,
DeFRCN's empty slots, are dropped), so the config is read for validation only and the numbers equal eval.py's.
Writes ``bbox_results.json`` (COCO results) and ``metrics.json`` into OUT (default: RESULT_DIR).
"""

import argparse
import json

from src.cli import run
from src.config import load_config
from src.deploy.pipeline import postprocess_results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--result_dir", required=True)
    parser.add_argument("--ann_file", required=True, help="COCO instances JSON of the split that was run")
    parser.add_argument("--output_dir", default=None, help="default: RESULT_DIR")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    load_config(args.config, args.set)
    output_dir = args.output_dir or args.result_dir
    stats = postprocess_results(args.result_dir, args.ann_file, output_dir)
    print(json.dumps({"bbox": stats}, indent=1))
    print(f"bbox_results.json and metrics.json in {output_dir}")
    return stats


if __name__ == "__main__":
    run(main)
