"""Print the format of a checkpoint, for scripts that must pick a config and a converter from the file alone.

    python -m tools.checkpoint_format CKPT

Prints ``focus_detr_ms5`` for the MindSpore model zoo's 5-scale Focus-DETR checkpoint (research/cv/Focus-DETR, its
parameter names; convert it with ``tools/convert_weights.py --model focus_detr_ms5``), and ``mindspore`` for
anything else (our own checkpoints; a missing or unreadable file is left to the caller to report). Exit status 0.
"""

import sys

from src.cli import run
from src.models.focus_detr.convert_ms5 import checkpoint_is_ms5


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tools.checkpoint_format CKPT", file=sys.stderr)
        return 2
    print("focus_detr_ms5" if checkpoint_is_ms5(argv[0]) else "mindspore")
    return 0


if __name__ == "__main__":
    run(main)
