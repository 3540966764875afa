"""Train a detector: ``python train.py --config configs/detr/detr_r50.yaml --coco_path COCO --output_dir OUT``.

Thin entry point: arguments -> config -> runtime -> :func:`src.engine.trainer.train`. DeFRCN fine-tuning starts
from a surgery checkpoint: ``--pretrained model_reset_remove.ckpt --pretrained_partial`` (the FSOD box predictor
is re-learned, so its keys are absent from the checkpoint).
"""

import argparse
from pathlib import Path

from src.cli import run
from src.config import load_config, save_config
from src.engine.trainer import TrainOptions, train
from src.runtime import DEVICE_TARGETS, init_context


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/detr/detr_r50.yaml")
    parser.add_argument("--coco_path", required=True,
                        help="dataset root: the COCO folder (annotations/ and split images) or the VOCdevkit")
    parser.add_argument("--output_dir", required=True, help="logs, resolved config and checkpoints go here")
    parser.add_argument("--mindrecord_dir", default=None,
                        help="MindRecord cache (default: OUTPUT_DIR/../mindrecord, shared by runs)")
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    parser.add_argument("--distributed", action="store_true", help="data parallel under msrun")
    parser.add_argument("--pynative", action="store_true", help="eager mode, for debugging")
    parser.add_argument("--epochs", type=int, help="overrides train.epochs (DETR family)")
    parser.add_argument("--max_iter", type=int, help="overrides train.max_iter (DeFRCN, before linear scaling)")
    parser.add_argument("--max_steps", type=int, default=0, help="stop after N optimizer steps in total")
    parser.add_argument("--batch_size", type=int, help="per device; overrides train.batch_size")
    parser.add_argument("--max_images", type=int, help="use only the first N images of the split")
    parser.add_argument("--resume", help="checkpoint to continue from (weights, optimizer, epoch, step)")
    parser.add_argument("--pretrained", help="checkpoint with initial weights (e.g. converted official)")
    parser.add_argument("--pretrained_partial", action="store_true",
                        help="network keys absent from --pretrained keep their initialization (logged), e.g. the "
                             "box predictor after a DeFRCN 'remove' surgery")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set train.lr=2e-4 model.num_queries=50")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.max_iter is not None:
        overrides.append(f"train.max_iter={args.max_iter}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = load_config(args.config, overrides)
    runtime = init_context(args.device_target, args.pynative, args.distributed, seed=cfg["train"]["seed"])
    if runtime.is_main:
        save_config(cfg, Path(args.output_dir) / "config.yaml")
    mindrecord_dir = args.mindrecord_dir or str(Path(args.output_dir).resolve().parent / "mindrecord")
    opts = TrainOptions(args.coco_path, args.output_dir, mindrecord_dir, args.resume, args.pretrained,
                        args.max_steps, args.max_images, strict_pretrained=not args.pretrained_partial)
    train(cfg, opts, runtime)


if __name__ == "__main__":
    run(main)
