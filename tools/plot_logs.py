"""Plot training metrics of one or more runs on one figure.

``python tools/plot_logs.py RUN_DIR [RUN_DIR ...] [--keys loss loss_ce ...] [--output curves.png]``

Reads each run's ``metrics.jsonl`` (written by ``train.py`` beside ``train.log``) and draws one subplot per key
with one line per run (``src.engine.loss_plot``). Default output: ``loss_curve.png`` in the first run's folder
when one run is given, else ``runs_<key>.png`` in the current folder.
"""

import argparse
from pathlib import Path

from src.cli import run
from src.engine.loss_plot import DEFAULT_KEYS, plot_runs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="training output folders holding metrics.jsonl")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS),
                        help="metrics to plot, e.g. loss loss_ce loss_bbox loss_giou lr grad_norm img_per_s")
    parser.add_argument("--output", help="PNG file to write")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Plot the runs; a missing or malformed ``metrics.jsonl`` or an unknown key raises an input error, which
    ``src.cli.run`` reports in one line with exit status 2."""
    args = parse_args(argv)
    output = args.output or (Path(args.run_dirs[0]) / "loss_curve.png" if len(args.run_dirs) == 1
                             else Path(f"runs_{'_'.join(args.keys)}.png"))
    path = plot_runs(args.run_dirs, output, args.keys)
    print(f"wrote {path}")


if __name__ == "__main__":
    run(main)
