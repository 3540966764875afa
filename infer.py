"""Detect objects in image files and write, per image, ``<stem>.json`` and ``<stem>.jpg`` (boxes drawn).

``python infer.py --config CFG --checkpoint CKPT --images IMG [IMG ...] --output_dir OUT [--score_threshold 0.7]``

DETR configs also take ``--attention [--attention_points X,Y ...]``: per image, ``<stem>_decoder_attention.png``
(each detection's last-layer cross-attention) and ``<stem>_encoder_attention.png`` (encoder self-attention at the
points; default the best detections' centres), see ``src.models.detr.attention_maps``.
"""

import argparse
import json
from pathlib import Path

import cv2

from src.config import load_config
from src.data.catalog import build_catalog
from src.engine.checkpoint import checkpoint_catalog, load_pretrained
from src.engine.evaluate import InferenceNet
from src.engine.predict import load_image, predict
from src.fileio import atomic_write_bytes, atomic_write_text
from src.models import build_model
from src.models.detr.attention_maps import DetrAttentionNet, parse_point, write_attention_figures
from src.runtime import DEVICE_TARGETS, init_context
from src.visualize import draw_detections


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", nargs="+", required=True)
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
        raise SystemExit(f"--attention needs a DETR config (model.name: detr); {args.config} is "
                         f"{cfg['model']['name']!r}")
    points = [parse_point(p) for p in args.attention_points or []]
    images = [(Path(p), load_image(p)) for p in args.images]  # fail on a bad file before any work
    init_context(args.device_target, args.pynative)
    # Detections are named from the classes the checkpoint was trained on (converted weights: the config's).
    catalog = checkpoint_catalog(args.checkpoint) or build_catalog(cfg["data"])
    detector = build_model(cfg, catalog=catalog)
    load_pretrained(args.checkpoint, detector.network, strict=True)
    net = InferenceNet(detector.network, detector.postprocess)
    net.set_train(False)
    attention = DetrAttentionNet(detector.network, detector.postprocess) if args.attention else None
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path, image in images:
        detections = predict(net, image, cfg["data"], threshold, catalog)
        atomic_write_text(out / f"{path.stem}.json", json.dumps(detections, indent=1))
        drawn = cv2.cvtColor(draw_detections(image, detections), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", drawn)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the detections drawn on {path}")
        atomic_write_bytes(out / f"{path.stem}.jpg", encoded.tobytes())
        print(f"{path}: {len(detections)} detections >= {threshold} -> {out / (path.stem + '.json')}")
        if attention is not None:
            for figure in write_attention_figures(attention, image, cfg["data"], out, path.stem, threshold, points,
                                                  catalog.id_to_name()):
                print(f"{path}: attention figure -> {figure}")


if __name__ == "__main__":
    main()
