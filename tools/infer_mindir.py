"""Run an exported MINDIR with MindSpore on CPU or GPU over a preprocess.py folder (the CPU/GPU twin of
ascend310_infer).

``python tools/infer_mindir.py --mindir MINDIR --input_dir BIN_DIR --output_dir RESULT_DIR
[--device_target CPU|GPU|Ascend]``

Loads the graph with ``ms.load`` + ``nn.GraphCell`` (no Python model code), feeds the images in
``manifest.txt`` order, writes ``<id>_0.bin`` scores, ``<id>_1.bin`` labels, ``<id>_2.bin`` boxes per image
and ``manifest.txt``, and prints the mean latency (the first image, which includes graph compilation, is
reported apart).
"""

import argparse

from src.cli import run
from src.deploy.pipeline import run_mindir
from src.runtime import DEVICE_TARGETS, init_context


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mindir", required=True)
    parser.add_argument("--input_dir", required=True, help="folder written by preprocess.py")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    init_context(args.device_target)
    timing = run_mindir(args.mindir, args.input_dir, args.output_dir)
    print(f"{timing['num_images']} images; first (with graph compilation) {timing['first_ms']:.1f} ms; "
          f"mean latency {timing['mean_ms']:.1f} ms/image; outputs in {args.output_dir}")
    return timing


if __name__ == "__main__":
    run(main)
