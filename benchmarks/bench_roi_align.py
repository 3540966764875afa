"""Cost of DeFRCN's adaptive ROIAlign grid against the fixed one (``src/ops/roi_align.py``), graph mode, CPU.

Two cases, the ROIAlign alone at DeFRCN's sizes:

* ``infer``: the box head's pooler at test time: one 800x1333 image (res4 [1, 1024, 50, 84], scale 1/16),
  1000 proposals, 7x7 output;
* ``train``: the same pooler in a base-training step: two images, 512 RoIs each, forward and the gradient
  with respect to the features.

Each (case, mode) is measured in its own subprocess (``benchmarks/measure.py``), so a peak resident set size
belongs to that mode alone; modes alternate A B A B over ``--rounds`` rounds and the medians are printed.
``fixed`` is ``sampling_ratio=2`` (``ops.ROIAlign``), ``adaptive`` is ``sampling_ratio=0`` with
``max_grid=12`` (DeFRCN's default). Boxes are random, 16 to 800 px a side, inside the image; features random.
Time per call excludes the first (compiling) call; memory is the peak RSS minus the RSS once the inputs exist.

Run from the repository root::

    python -m benchmarks.bench_roi_align [--rounds 3] [--iters 3] [--only infer train]
"""

import argparse
import statistics

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result, rss_mb, time_steps

CASES = {"infer": dict(batch=1, boxes=1000, train=False), "train": dict(batch=2, boxes=512, train=True)}
MODES = {"fixed": 2, "adaptive": 0}
HEIGHT, WIDTH, CHANNELS, STRIDE, OUTPUT = 800, 1333, 1024, 16, 7


def _boxes(rng, batch, num):
    sides = rng.uniform(16.0, 800.0, (batch, num, 2))
    x0 = rng.uniform(0.0, 1.0, (batch, num)) * (WIDTH - sides[..., 0])
    y0 = rng.uniform(0.0, 1.0, (batch, num)) * (HEIGHT - sides[..., 1])
    return np.stack([x0, y0, x0 + sides[..., 0], y0 + sides[..., 1]], axis=-1).astype(np.float32)


def worker(case: str, mode: str, iters: int) -> dict:
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from src.ops.roi_align import ROIAlignV2

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    spec = CASES[case]
    rng = np.random.default_rng(0)
    shape = (spec["batch"], CHANNELS, -(-HEIGHT // STRIDE), -(-WIDTH // STRIDE))
    features = Tensor(rng.standard_normal(shape).astype(np.float32))
    boxes = Tensor(_boxes(rng, spec["batch"], spec["boxes"]))
    pooler = ROIAlignV2(OUTPUT, 1.0 / STRIDE, MODES[mode])

    class FeatureGrad(nn.Cell):
        def __init__(self):
            super().__init__()
            self.pooler = pooler
            self.grad = ops.GradOperation()

        def construct(self, feats, rois):
            return self.grad(self.pooler)(feats, rois)

    net = FeatureGrad() if spec["train"] else pooler
    base = rss_mb()
    compile_s, per_call = time_steps(lambda: net(features, boxes).asnumpy(), 1, iters)
    return {"case": case, "mode": mode, "compile_s": compile_s, "s_per_call": per_call,
            "peak_delta_mb": peak_mb() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per case (medians are reported)")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print_result(worker(args.case, args.worker, args.iters))
        return
    for case in args.only:
        runs = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(measure_in_subprocess("benchmarks.bench_roi_align", mode,
                                                        ["--case", case, "--iters", args.iters]))
        for mode, results in runs.items():
            per_call = statistics.median(r["s_per_call"] for r in results)
            memory = statistics.median(r["peak_delta_mb"] for r in results)
            compile_s = statistics.median(r["compile_s"] for r in results)
            print(f"{case:5s} {mode:8s} {per_call * 1000:8.1f} ms/call  peak +{memory:7.0f} MB  "
                  f"first call {compile_s:5.1f} s  ({args.rounds} runs, medians)", flush=True)


if __name__ == "__main__":
    main()
