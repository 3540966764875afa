"""Evaluate a checkpoint on a COCO split: prints the 12-line COCOeval table, writes results and metrics.

``python eval.py --config CFG --coco_path COCO --checkpoint CKPT [--split val2017] [--max_images N]
[--output_dir OUT]``
"""

import argparse
from pathlib import Path

from src.config import load_config, save_config
from src.engine.checkpoint import load_pretrained
from src.engine.evaluate import InferenceNet, evaluate_coco
from src.engine.logger import setup_logger
from src.models import build_model
from src.runtime import DEVICE_TARGETS, init_context


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--coco_path", required=True)
    parser.add_argument("--checkpoint", required=True, help="MindSpore checkpoint (trained or converted)")
    parser.add_argument("--split", help="default: data.val_split of the config (val2017)")
    parser.add_argument("--max_images", type=int, help="evaluate only the first N images")
    parser.add_argument("--output_dir", default=None, help="default: the checkpoint's folder / eval_<split>")
    parser.add_argument("--mindrecord_dir", default=None, help="default: OUTPUT_DIR/mindrecord")
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    parser.add_argument("--pynative", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    split = args.split or cfg["data"]["val_split"]
    output_dir = Path(args.output_dir or Path(args.checkpoint).resolve().parent / f"eval_{split}")
    init_context(args.device_target, args.pynative)
    logger = setup_logger(output_dir, "eval")
    save_config(cfg, output_dir / "config.yaml")
    detector = build_model(cfg)
    load_pretrained(args.checkpoint, detector.network, strict=True)
    net = InferenceNet(detector.network, detector.postprocess)
    mindrecord_dir = args.mindrecord_dir or str(output_dir / "mindrecord")
    stats = evaluate_coco(net, cfg, args.coco_path, split, mindrecord_dir, output_dir, args.max_images, logger)
    logger.info("AP %.4f AP50 %.4f AP75 %.4f; results and metrics.json in %s",
                stats["AP"], stats["AP50"], stats["AP75"], output_dir)


if __name__ == "__main__":
    main()
