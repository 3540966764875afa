"""Export the inference graph (network + post-process, static input shape) to MINDIR, AIR or ONNX.

``python export.py --config CFG --checkpoint CKPT --export_file_format MINDIR [--file_name NAME]
[--batch_size 1] [--image_size H W] [--device_target CPU|GPU|Ascend]``

The file goes beside the checkpoint (``run/detr-50_100.ckpt`` -> ``run/detr-50_100.mindir``) unless ``--file_name``
names another path.

Inputs of the exported graph: image float32 [B, 3, H, W], mask bool [B, H, W] (True on padding), orig_size
int32 [B, 2] (h, w); outputs: scores float32 [B, Q], labels int32 [B, Q], boxes float32 [B, Q, 4] xyxy in
original-image pixels. (H, W) defaults to the largest ``data.eval_pad_buckets`` entry; see
src/deploy/export.py for the size rule. MINDIR works on every device, AIR only with Ascend, ONNX only where
MindSpore's ONNX exporter supports every operator (not yet for DETR or Focus-DETR: MindSpore 2.10 cannot
export ``Rsqrt``; the exporter's error is shown). Any model of ``src.models.build_model`` exports the same way.
"""

import argparse
from pathlib import Path

from src.cli import run
from src.config import load_config
from src.deploy.bin_io import DeployError
from src.deploy.export import (
    EXTENSIONS,
    check_format,
    example_inputs,
    export_graph,
    resolve_image_size,
)
from src.models import build_inference_net
from src.runtime import DEVICE_TARGETS, init_context


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="MindSpore checkpoint (trained or converted)")
    parser.add_argument("--export_file_format", default="MINDIR", help=f"one of {sorted(EXTENSIONS)}")
    parser.add_argument("--file_name", default=None,
                        help="output path without extension (default: the checkpoint's path without .ckpt, i.e. "
                             "beside the checkpoint)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--image_size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="static padded input size; default: the largest data.eval_pad_buckets entry")
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    # Every cheap check runs before the model is built, so a wrong option fails in a second.
    file_format = check_format(args.export_file_format, args.device_target)
    height, width = resolve_image_size(cfg, args.image_size)
    inputs = example_inputs(height, width, args.batch_size)
    if not Path(args.checkpoint).is_file():
        raise DeployError(f"checkpoint '{args.checkpoint}' does not exist; pass a trained or converted .ckpt")
    init_context(args.device_target)
    net = build_inference_net(cfg, args.checkpoint)
    file_name = args.file_name or str(Path(args.checkpoint).with_suffix(""))
    path = export_graph(net, inputs, file_name, file_format, args.device_target)
    print(f"exported {file_format} to {path}: image float32 [{args.batch_size}, 3, {height}, {width}], mask bool "
          f"[{args.batch_size}, {height}, {width}], orig_size int32 [{args.batch_size}, 2] -> scores, labels, "
          f"boxes (xyxy, original pixels)")
    return path


if __name__ == "__main__":
    run(main)
