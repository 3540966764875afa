"""Evaluate a checkpoint: prints the COCOeval table (or VOC AP), writes results and metrics.json.

``python eval.py --config CFG --coco_path ROOT --checkpoint CKPT [--split SPLIT] [--max_images N]
[--output_dir OUT] [--set KEY=VALUE ...]``

Any COCO-format dataset (``data.dataset: coco``, its own categories) or VOC-format one (``data.dataset: voc``,
``data.class_names``): the COCOeval table, or VOC AP50 / AP, over the dataset's classes. DeFRCN few-shot class
sets: also bAP and nAP; VOC (``--coco_path`` is then the VOCdevkit): VOC2007 11-point AP50, nAP50 / bAP50 and
per-class AP50; ``--set eval.pcb_enable=true eval.pcb_model=PCB.ckpt`` re-scores detections with PCB
(support set: the config's few-shot split, ``data.shot`` / ``data.seed``). Each image is evaluated at its own size
at batch 1 (``eval.unpadded``, the default, ``src/evaluation/unpadded.py``); ``--set eval.unpadded=false`` pads
batches of ``eval.batch_size`` to the ``data.eval_pad_buckets``. See ``src/evaluation/evaluate.py``.
"""

import argparse
import json
from pathlib import Path

from src.checkpoint import checkpoint_catalog
from src.cli import run
from src.config import load_config, save_config
from src.data.catalog import build_catalog
from src.engine.logger import setup_logger
from src.evaluation.evaluate import evaluate_model
from src.fileio import atomic_write_text, file_sha256
from src.models import build_inference_net
from src.runtime import DEVICE_TARGETS, init_context


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--coco_path", required=True, help="dataset root: the COCO folder, or the VOCdevkit")
    parser.add_argument("--checkpoint", required=True, help="MindSpore checkpoint (trained or converted)")
    parser.add_argument("--split", help="default: data.val_split of the config (e.g. val2017, 5k, 2007_test)")
    parser.add_argument("--max_images", type=int, help="evaluate only the first N images")
    parser.add_argument("--output_dir", default=None,
                        help="default: eval_<checkpoint stem>_<split>/ beside the checkpoint, one per checkpoint")
    parser.add_argument("--mindrecord_dir", default=None,
                        help="MindRecord cache of the split, shared by the checkpoints of a folder "
                             "(default: eval_<split>/mindrecord beside the checkpoint)")
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    parser.add_argument("--pynative", action="store_true")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides; may be given more than once")
    return parser.parse_args(argv)


def add_provenance(metrics_path: Path, checkpoint: Path, cfg: dict, split: str) -> None:
    """Record in ``metrics.json`` what produced it: ``checkpoint`` (absolute path), ``checkpoint_sha256``,
    ``split`` and the resolved ``config``; rewritten atomically."""
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics.update(checkpoint=str(checkpoint), checkpoint_sha256=file_sha256(checkpoint), split=split, config=cfg)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    split = args.split or cfg["data"]["val_split"]
    checkpoint = Path(args.checkpoint).resolve()
    output_dir = Path(args.output_dir or checkpoint.parent / f"eval_{checkpoint.stem}_{split}")
    init_context(args.device_target, args.pynative)
    logger = setup_logger(output_dir, "eval")
    save_config(cfg, output_dir / "config.yaml")
    # The classes the checkpoint was trained on (training stores them); converted weights: the dataset's.
    catalog = checkpoint_catalog(args.checkpoint) or build_catalog(cfg["data"], args.coco_path, "val")
    net = build_inference_net(cfg, args.checkpoint, catalog)
    mindrecord_dir = args.mindrecord_dir or str(checkpoint.parent / f"eval_{split}" / "mindrecord")
    stats = evaluate_model(net, cfg, args.coco_path, split, mindrecord_dir, output_dir, args.max_images, logger)
    add_provenance(output_dir / "metrics.json", checkpoint, cfg, split)
    logger.info("AP %.4f AP50 %.4f AP75 %.4f; metrics.json in %s", stats["AP"], stats["AP50"], stats["AP75"],
                output_dir)


if __name__ == "__main__":
    run(main)
