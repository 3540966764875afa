"""DeFRCN's few-shot protocol over shots x seeds, with one results table: surgery, fine-tune, evaluate, summarize.

Usage (after ``pip install -e .``; ``--coco_path`` is the COCO folder or, for VOC, the VOCdevkit)::

    # COCO FSOD, "FSRW-like" (DeFRCN's FSOD tables): seed 0 repeated 10 times (the default for fsod)
    python tools/run_few_shot.py --dataset coco --setting fsod --shots 1 2 3 5 10 30 \\
        --base_ckpt base/defrcn-final.ckpt --coco_path datasets/coco --output_dir runs/coco_fsod \\
        --set data.few_shot_root=datasets/cocosplit eval.pcb_model=resnet101_pcb.ckpt
    # COCO gFSOD, "TFA-like": seeds 0-9 once each (the default for gfsod)
    python tools/run_few_shot.py --dataset coco --setting gfsod --shots 1 2 3 5 10 30 --seeds 0-9 ...
    # VOC split 1
    python tools/run_few_shot.py --dataset voc --split 1 --setting fsod --shots 1 2 3 5 10 ...

The base checkpoint goes through model surgery once (``remove`` for fsod, ``randinit`` for gfsod, written to
``OUTPUT_DIR``); each run then fine-tunes with ``train.py`` from the config of its shot count (``--set
data.shot=K data.seed=S``) and is evaluated with ``eval.py``; ``OUTPUT_DIR/results.md`` and ``results.csv``
hold, per shot, the mean and 1.96 * std / sqrt(n) of nAP/nAP50/nAP75 (COCO FSOD), nAP/nAP50/nAP75/bAP/AP
(COCO gFSOD), nAP50 (VOC FSOD) or nAP50/bAP50/AP50 (VOC gFSOD), in percent; ``runs.csv`` has every run.
Rerunning the same command resumes: finished runs (``eval/metrics.json``) are read, not run again.
``--dry_run`` prints the commands. See ``tools/few_shot_protocol.py``.
"""

import argparse
import logging
import sys
from pathlib import Path

from src.cli import run
from src.config import load_config
from src.runtime import DEVICE_TARGETS
from tools.few_shot_protocol import (
    DATASETS,
    METRICS,
    REPO_ROOT,
    SETTINGS,
    SURGERY_FILE,
    SURGERY_METHOD,
    ProtocolError,
    SubprocessRunner,
    parse_seeds,
    plan_runs,
    read_metrics,
    run_grid,
)

CONFIG_PATTERNS = {
    "coco": "defrcn_{setting}_r101_novel_coco_{shot}shot.yaml",
    "voc": "defrcn_{setting}_r101_novel{split}_voc_{shot}shot.yaml",
}
"""Default fine-tune config name per dataset, in ``--config_dir`` (DeFRCN's names plus the dataset)."""
DEFAULT_PLAN = {"fsod": (["0"], 10), "gfsod": (["0-9"], 1)}
"""(seeds, repeats) when not given: FSRW-like for fsod, TFA-like for gfsod, as DeFRCN's run_*.sh."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--setting", required=True, choices=SETTINGS)
    parser.add_argument("--shots", required=True, nargs="+", type=int, help="e.g. 1 2 3 5 10 30 (VOC: up to 10)")
    parser.add_argument("--seeds", nargs="+", help="split seeds, e.g. 0-9 or 0 3 5 (default: 0 for fsod, "
                                                   "0-9 for gfsod)")
    parser.add_argument("--repeats", type=int, help="runs per shot and seed (default: 10 for fsod, 1 for gfsod)")
    parser.add_argument("--split", type=int, choices=(1, 2, 3), help="VOC few-shot split (required for voc)")
    parser.add_argument("--base_ckpt", required=True, help="base-training checkpoint (before surgery)")
    parser.add_argument("--coco_path", required=True, help="dataset root: the COCO folder or the VOCdevkit")
    parser.add_argument("--output_dir", required=True, help="surgery checkpoint, runs and tables go here")
    parser.add_argument("--device_target", default="CPU", choices=DEVICE_TARGETS)
    parser.add_argument("--config_dir", default=str(REPO_ROOT / "configs" / "defrcn"))
    parser.add_argument("--config_pattern", help="fine-tune config file name in --config_dir with {setting}, "
                                                 "{shot}, {split} fields (default: " +
                        "; ".join(f"{k}: {v}" for k, v in CONFIG_PATTERNS.items()) + ")")
    parser.add_argument("--mindrecord_dir", help="MindRecord cache shared by the runs (default: OUTPUT_DIR/mindrecord)")
    parser.add_argument("--surgery_seed", type=int, default=0, help="seed of the randinit rows (gfsod)")
    parser.add_argument("--delete_checkpoints", action="store_true",
                        help="delete each run's fine-tuned checkpoints once it is evaluated")
    parser.add_argument("--max_eval_images", type=int, help="evaluate only the first N test images (quick checks)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands; run nothing")
    parser.add_argument("--pynative", action="store_true",
                        help="fine-tune and evaluate in PyNative mode (quick checks of tiny models)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every fine-tune and evaluation")
    args = parser.parse_args(argv)
    if args.dataset == "voc" and args.split is None:
        parser.error("--split is required for --dataset voc")
    return args


def resolve_configs(args) -> dict:
    """shot -> fine-tune config path; every file must exist and be a DeFRCN config of the requested dataset.

    Raises:
        FileNotFoundError: a missing config (names it). ValueError: one for another model or dataset.
    """
    pattern = args.config_pattern or CONFIG_PATTERNS[args.dataset]
    configs = {}
    for shot in args.shots:
        path = Path(args.config_dir) / pattern.format(setting=args.setting, shot=shot, split=args.split)
        if not path.is_file():
            raise FileNotFoundError(f"no fine-tune config for {shot}-shot {args.dataset} {args.setting}: {path}")
        cfg = load_config(str(path), list(args.set))
        if cfg["model"]["name"] != "defrcn" or cfg["data"]["dataset"] != args.dataset:
            raise ValueError(f"{path} is a {cfg['model']['name']} config for {cfg['data'].get('dataset')!r}, "
                             f"not a DeFRCN {args.dataset} one")
        configs[shot] = path
    return configs


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    default_seeds, default_repeats = DEFAULT_PLAN[args.setting]
    seeds = parse_seeds(args.seeds or default_seeds)
    repeats = args.repeats if args.repeats is not None else (default_repeats if args.seeds is None else 1)
    output_dir = Path(args.output_dir)
    try:
        configs = resolve_configs(args)
        train_seed = int(load_config(str(configs[args.shots[0]]), list(args.set))["train"]["seed"])
        specs = plan_runs(args.shots, seeds, repeats, output_dir)
        surgery_ckpt = output_dir / SURGERY_FILE[args.setting]
        runner = SubprocessRunner(configs, args.setting, surgery_ckpt, args.coco_path,
                                  Path(args.mindrecord_dir or output_dir / "mindrecord"), args.device_target,
                                  list(args.set), train_seed, args.delete_checkpoints, args.max_eval_images,
                                  dry_run=args.dry_run, pynative=args.pynative)
        names = METRICS[(args.dataset, args.setting)]
        logging.info("%d runs: shots %s, seeds %s, %d repeat(s)", len(specs), args.shots, seeds, repeats)
        if args.dry_run:
            logging.info("would run surgery: %s %s -> %s", SURGERY_METHOD[args.setting], args.base_ckpt, surgery_ckpt)
            for spec in specs:
                if read_metrics(spec.metrics_path, names) is None:
                    runner(spec)
            return 0
        if not surgery_ckpt.is_file():
            from src.models.defrcn.surgery import model_surgery

            model_surgery(SURGERY_METHOD[args.setting], args.base_ckpt, surgery_ckpt, args.dataset, args.split,
                          args.surgery_seed)
            logging.info("surgery %s: %s -> %s", SURGERY_METHOD[args.setting], args.base_ckpt, surgery_ckpt)
        run_grid(specs, runner, names, output_dir)
    except (ProtocolError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print((output_dir / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    run(main)
