"""Box-predictor surgery on a DeFRCN base-training checkpoint (DeFRCN/TFA ``model_surgery``).

Usage (after ``pip install -e .``)::

    python tools/model_surgery.py --method remove --src base.ckpt --output model_reset_remove.ckpt --dataset coco
    python tools/model_surgery.py --method randinit --src base.ckpt --output model_reset_surgery.ckpt \\
        --dataset voc --split 1

``remove`` drops ``roi_heads.box_predictor.{cls_score,bbox_pred}.{weight,bias}`` (FSOD fine-tuning learns a
new head); ``randinit`` builds an all-class head (COCO 80, VOC 20) with the base-class rows copied to their
all-class indices (gFSOD). Optimizer state and progress metadata are dropped. The output is written
atomically and only when the surgery succeeds; on error the message goes to stderr and the exit status is 1.
See ``src/models/defrcn/surgery.py``.
"""

import argparse
import sys

from src.cli import run
from src.models.defrcn.surgery import SurgeryError, model_surgery


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=("remove", "randinit"), help="surgery to apply")
    parser.add_argument("--src", required=True, help="base-training MindSpore .ckpt")
    parser.add_argument("--output", required=True, help=".ckpt to write")
    parser.add_argument("--dataset", required=True, choices=("coco", "voc"), help="class lists to use")
    parser.add_argument("--split", type=int, choices=(1, 2, 3), help="VOC few-shot split (required for voc)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rows (randinit)")
    args = parser.parse_args(argv)
    try:
        weights = model_surgery(args.method, args.src, args.output, args.dataset, args.split, args.seed)
    except (SurgeryError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({len(weights)} tensors)")
    return 0


if __name__ == "__main__":
    run(main)
