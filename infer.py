"""Detect objects in image files and write, per image, ``<name>.json`` and ``<name>.jpg`` (boxes drawn).

``python infer.py --config CFG --checkpoint CKPT --images IMG|DIR|'GLOB' ... --output_dir OUT [--score_threshold 0.7]``

Each image runs at its own resized size (``eval.unpadded``, the default; ``--set eval.unpadded=false`` pads it to
a ``data.eval_pad_buckets`` entry instead).

``<name>`` is the image's stem, qualified by its parent folders when two inputs share a stem, with ``_det``
appended when an output would land on an input (inputs are never overwritten); see ``src/infer_paths.py``.

DETR configs also take ``--attention [--attention_points X,Y ...]``: per image, ``<name>_decoder_attention.png``
(each detection's last-layer cross-attention) and ``<name>_encoder_attention.png`` (encoder self-attention at the
points; default the best detections' centres), see ``src.models.detr.attention_maps``.
"""

import argparse
import json
from pathlib import Path

import cv2

from src.checkpoint import checkpoint_catalog
from src.cli import run
from src.config import load_config
from src.data.catalog import build_catalog
from src.engine.logger import setup_logger
from src.errors import InputError
from src.evaluation.predict import load_image, predict
from src.evaluation.unpadded import unpadded_inference
from src.fileio import atomic_write_bytes, atomic_write_text
from src.infer_paths import expand_inputs, output_names
from src.models import build_inference_net
from src.models.detr.attention_maps import DetrAttentionNet, parse_point, write_attention_figures
from src.progress import track
from src.runtime import DEVICE_TARGETS, init_context
from src.visualize import draw_detections


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", nargs="+", required=True,
                        help="image files, directories (their images) or quoted glob patterns ('imgs/**/*.jpg')")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--score_threshold", type=float, default=None, help="default: eval.score_threshold")
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    parser.add_argument("--pynative", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--attention", action="store_true", help="DETR only: also write attention figures")
    parser.add_argument("--attention_points", nargs="+", default=None, metavar="X,Y",
                        help="image points (pixels) for the encoder self-attention figure")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    threshold = cfg["eval"]["score_threshold"] if args.score_threshold is None else args.score_threshold
    if args.attention and cfg["model"]["name"] != "detr":
        raise InputError(f"--attention needs a DETR config (model.name: detr); {args.config} is "
                         f"{cfg['model']['name']!r}")
    points = [parse_point(p) for p in args.attention_points or []]
    paths = expand_inputs(args.images)
    names = output_names(paths, args.output_dir)
    images = [(path, name, load_image(path)) for path, name in zip(paths, names)]  # bad files fail before any work
    init_context(args.device_target, args.pynative)
    setup_logger(None, "infer")  # progress lines on the console
    # Detections are named from the classes the checkpoint was trained on (converted weights: the config's).
    catalog = checkpoint_catalog(args.checkpoint) or build_catalog(cfg["data"])
    net = build_inference_net(cfg, args.checkpoint, catalog)
    attention = DetrAttentionNet(net.network, net.postprocess) if args.attention else None
    unpadded = cfg["eval"]["unpadded"]
    if unpadded:  # each image at its own size (src/evaluation/unpadded.py); eval.unpadded=false pads to a bucket
        net = unpadded_inference(net, cfg["model"]["name"], eager=args.pynative)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path, name, image in track(images, len(images), "infer"):
        detections = predict(net, image, cfg["data"], threshold, catalog, unpadded)
        atomic_write_text(out / f"{name}.json", json.dumps(detections, indent=1))
        drawn = cv2.cvtColor(draw_detections(image, detections), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", drawn)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the detections drawn on {path}")
        atomic_write_bytes(out / f"{name}.jpg", encoded.tobytes())
        print(f"{path}: {len(detections)} detections >= {threshold} -> {out / (name + '.json')}")
        if attention is not None:
            for figure in write_attention_figures(attention, image, cfg["data"], out, name, threshold, points,
                                                  catalog.id_to_name()):
                print(f"{path}: attention figure -> {figure}")


if __name__ == "__main__":
    run(main)
