"""Convert PyTorch detector weights into a MindSpore checkpoint.

Usage (after ``pip install -e .``, which makes ``src`` importable)::

    python tools/convert_weights.py --model detr --source detr-r50-e632da11.pth --output detr_r50.ckpt
    python tools/convert_weights.py --model detr --source ./detr-resnet-50/ --output detr_r50.ckpt \\
        --config configs/detr/detr_r50_dc5.yaml

``--source`` is a torch-hub checkpoint or a Hugging Face model directory / weights file. Without ``--config``
the model is ``configs/detr/detr_r50.yaml`` with the ResNet depth read from the weights. The checkpoint is
written only if every source key maps onto a model parameter with the same shape and every parameter gets a
value; otherwise the offending keys are printed and the exit status is 1.
"""

import argparse
import sys
from pathlib import Path

from src.config import load_config
from src.models.detr.convert import ConversionError, convert_detr_checkpoint

DEFAULT_CONFIGS = {"detr": Path(__file__).resolve().parents[1] / "configs" / "detr" / "detr_r50.yaml"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=sorted(DEFAULT_CONFIGS), help="model family")
    parser.add_argument("--source", required=True, help="torch-hub .pth, or HF directory / weights file")
    parser.add_argument("--output", required=True, help="MindSpore .ckpt to write")
    parser.add_argument("--config", help="YAML config of the target model (default: R50, depth from weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.num_classes=21 (repeatable)")
    args = parser.parse_args(argv)

    config_path = args.config or DEFAULT_CONFIGS[args.model]
    model_cfg = load_config(config_path, args.overrides)["model"]
    try:
        info = convert_detr_checkpoint(args.source, args.output, model_cfg, detect_backbone=args.config is None)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {info['num_params']} parameters, backbone {info['backbone']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
