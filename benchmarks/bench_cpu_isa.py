"""MindSpore CPU convolution speed with oneDNN's default ISA beside the AVX2 cap that src/runtime.py sets.

Each setting runs in its own subprocess (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, at its first primitive)
and times the same graph-mode convolutions, taking the median of ``--iters`` runs after one warm-up.
Run from the repository root::

    python -m benchmarks.bench_cpu_isa [--iters 5]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# (name, input shape NCHW, out channels, kernel, stride): the stem and typical 3x3 / 1x1 ResNet convs.
CASES = (
    ("stem 7x7/2, 3->64, 2x3x320x320", (2, 3, 320, 320), 64, 7, 2),
    ("3x3, 64->64, 2x64x80x80", (2, 64, 80, 80), 64, 3, 1),
    ("3x3, 256->256, 2x256x20x20", (2, 256, 20, 20), 256, 3, 1),
    ("1x1, 256->1024, 2x256x40x40", (2, 256, 40, 40), 1024, 1, 1),
)


def _worker(iters: int) -> dict:
    import mindspore as ms
    from mindspore import nn

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rng = np.random.default_rng(0)
    times = {}
    for name, shape, out_channels, kernel, stride in CASES:
        conv = nn.Conv2d(shape[1], out_channels, kernel, stride, pad_mode="pad", padding=kernel // 2)
        x = ms.Tensor(rng.standard_normal(shape).astype(np.float32))
        conv(x).asnumpy()
        runs = []
        for _ in range(iters):
            tic = time.perf_counter()
            conv(x).asnumpy()
            runs.append(time.perf_counter() - tic)
        times[name] = float(np.median(runs))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.iters)))
        return
    results = {}
    for label, isa in (("oneDNN default", None), ("ONEDNN_MAX_CPU_ISA=AVX2", "AVX2")):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu_isa", "--worker", "--iters", str(args.iters)],
                             env=env, capture_output=True, text=True, check=True).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    print(f"{'convolution (graph mode, CPU)':34s} {'default ms':>11s} {'AVX2 ms':>9s} {'speed-up':>9s}")
    for name, *_ in CASES:
        slow, fast = results["oneDNN default"][name], results["ONEDNN_MAX_CPU_ISA=AVX2"][name]
        print(f"{name:34s} {slow * 1e3:11.1f} {fast * 1e3:9.1f} {slow / fast:8.1f}x")


if __name__ == "__main__":
    main()
