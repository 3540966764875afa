"""DeFRCN (Faster R-CNN C4, ResNet-101) speed and memory in MindSpore graph mode.

Measures, at one input size (default 800x1333, detectron2's test size for a landscape COCO image):

* inference, batch 1, eval mode: the evaluation graph (``InferenceNet``): backbone to res4, decoupled branches,
  RPN (6000 -> NMS -> 1000 proposals), ROIAlign + res5 head, per-class NMS to 100 detections, rescaling to the
  original image;
* one training step, batch 2 (default): the COCO base-training config (60 classes, RPN 12000 -> 2000 proposals,
  256 anchors and 512 ROIs sampled per image, stem/res2/res3 frozen, GDL lambda 0 / 0.75) through the trainer's
  ``TrainStep`` with the DeFRCN loss network and the warmup multi-step momentum SGD (``src/engine/optim/sgd.py``):
  forward, the four detectron2 losses, backward and update, compiled as one graph.

Peak memory and timing follow ``benchmarks/bench_detr.py`` (its helpers are reused): every measurement runs
in its own subprocess, peak resident set size (``ru_maxrss``) is reported with the RSS before the model is
built and their difference, and throughput excludes the warm-up iterations (which include graph
compilation, timed separately). Weights are random: speed does not depend on their values. There is no
PyTorch side: DeFRCN's reference needs detectron2 0.3, which does not install on current PyTorch.

Run from the repository root::

    python -m benchmarks.bench_defrcn [--iters 3] [--height 800 --width 1333] [--only infer train]

Small-size check (proposal counts are capped at what the anchor grid offers)::

    python -m benchmarks.bench_defrcn --height 256 --width 384 --depth 50 --iters 1
"""

import argparse
import json
import math
import os

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result, rss_mb, time_steps

MEASUREMENTS = ("infer", "train")
CONFIG = "configs/defrcn/defrcn_det_r101_base_coco.yaml"  # COCO base training, 60 classes
MAX_BOXES = 100
NUM_BOXES = 6  # valid ground-truth boxes per training image
NUM_ANCHORS = 15  # 5 sizes x 3 ratios per res4 position


def _proposal_counts(height: int, width: int) -> dict:
    """detectron2's RPN top-k, capped so that NMS never keeps more slots than there are anchors."""
    anchors = math.ceil(height / 16) * math.ceil(width / 16) * NUM_ANCHORS
    return {
        "rpn_pre_nms_topk_train": min(12000, anchors), "rpn_post_nms_topk_train": min(2000, anchors // 2),
        "rpn_pre_nms_topk_test": min(6000, anchors), "rpn_post_nms_topk_test": min(1000, anchors // 2),
    }


def _targets(batch: int, height: int, width: int, seed: int = 0):
    """Random ground truth in the pipeline's format: normalized cxcywh, COCO base-class ids, ``NUM_BOXES`` valid
    rows of ``MAX_BOXES``."""
    from src.data.few_shot import COCO_BASE_IDS

    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, MAX_BOXES, 4), np.float32)
    w = rng.uniform(32, 0.3 * width, (batch, NUM_BOXES))
    h = rng.uniform(32, 0.3 * height, (batch, NUM_BOXES))
    cx = rng.uniform(0, 0.7 * width, (batch, NUM_BOXES)) + w / 2
    cy = rng.uniform(0, 0.7 * height, (batch, NUM_BOXES)) + h / 2
    boxes[:, :NUM_BOXES] = np.stack([cx / width, cy / height, w / width, h / height], axis=-1)
    labels = np.zeros((batch, MAX_BOXES), np.int32)
    labels[:, :NUM_BOXES] = rng.choice(COCO_BASE_IDS, (batch, NUM_BOXES))
    valid = np.zeros((batch, MAX_BOXES), bool)
    valid[:, :NUM_BOXES] = True
    return boxes, labels, valid


def run_mindspore(train: bool, height: int, width: int, batch: int, depth: int, warmup: int, iters: int) -> dict:
    from mindspore import Tensor

    from src.config import load_config
    from src.engine.optim.sgd import build_sgd, scale_schedule
    from src.engine.train_step import TrainStep
    from src.models import build_model
    from src.runtime import init_context

    init_context("CPU")  # graph mode; also selects oneDNN's fast AVX2 convolutions (see src/runtime.py)
    base_rss = rss_mb()
    proposals = _proposal_counts(height, width)
    cfg = load_config(CONFIG, [f"model.depth={depth}"] + [f"model.{k}={v}" for k, v in proposals.items()])
    detector = build_model(cfg)
    rng = np.random.default_rng(0)
    image = Tensor(rng.standard_normal((batch, 3, height, width)).astype(np.float32) * 50.0)
    mask = Tensor(np.zeros((batch, height, width), bool))
    if train:
        train_cfg = cfg["train"]
        optimizer = build_sgd(detector.network, train_cfg, scale_schedule(train_cfg, batch))
        step_cell = TrainStep(detector.train_network, optimizer, clip_max_norm=train_cfg["clip_max_norm"])
        step_cell.set_train(True)
        targets = [Tensor(t) for t in _targets(batch, height, width)]

        def step():
            loss, _, _ = step_cell(image, mask, *targets)
            loss.asnumpy()
    else:
        net = detector.inference_network
        net.set_train(False)
        orig_size = Tensor(np.tile(np.array([[height, width]], np.int32), (batch, 1)))

        def step():
            scores, _, _ = net(image, mask, orig_size)
            scores.asnumpy()

    warm, per_step = time_steps(step, warmup, iters)
    return {"batch": batch, "depth": depth, **proposals, "warmup_s": warm, "step_s": per_step,
            "images_per_s": batch / per_step, "base_rss_mb": base_rss, "peak_rss_mb": peak_mb()}


def _measure(name: str, args) -> dict:
    batch = args.train_batch if name == "train" else 1
    return measure_in_subprocess("benchmarks.bench_defrcn", name, [
        "--height", args.height, "--width", args.width, "--depth", args.depth, "--train_batch", batch,
        "--warmup", args.warmup, "--iters", args.iters])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101), help="ResNet depth")
    parser.add_argument("--train_batch", type=int, default=2, help="images per training step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (include compilation)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--worker", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = run_mindspore(args.worker == "train", args.height, args.width, args.train_batch, args.depth,
                               args.warmup, args.iters)
        print_result(result)
        return

    results = {}
    for name in args.only:
        results[name] = _measure(name, args)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(f"\nDeFRCN R-{args.depth} C4, {args.height}x{args.width}, CPU ({os.cpu_count()} cores), graph mode, "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    print(f"{'measurement':<40}{'value':>12}")
    for name, label in (("infer", "inference bs1"), ("train", f"train step bs{args.train_batch}")):
        if name not in results:
            continue
        res = results[name]
        for title, value, fmt in ((f"{label}: images/s", res["images_per_s"], "{:.3f}"),
                                  (f"{label}: s/step", res["step_s"], "{:.2f}"),
                                  (f"{label}: warm-up s (compile)", res["warmup_s"], "{:.1f}"),
                                  (f"{label}: peak RSS MB", res["peak_rss_mb"], "{:.0f}"),
                                  (f"{label}: peak - base MB", res["peak_rss_mb"] - res["base_rss_mb"], "{:.0f}")):
            print(f"{title:<40}{fmt.format(value):>12}")


if __name__ == "__main__":
    main()
