"""bf16 inference of DETR-R50 beside fp32, on both sides of the fair benchmark (:mod:`benchmarks.bench_detr`).

* PyTorch: the reference under ``torch.autocast("cpu", dtype=torch.bfloat16)`` against the same model in fp32,
  alternated (fp32, bf16, fp32, ...) in one process on one random image.
* MindSpore: the port cast to bfloat16 with ``mindspore.amp.auto_mixed_precision(network, "O3",
  dtype=mindspore.bfloat16)`` (the whole network in bf16, as CPU has no white-list ``O2``), run once; if a kernel
  has no bf16 CPU implementation the first line of MindSpore's error is reported instead of a time.

Differences against each side's own fp32 output: max abs difference of ``pred_logits`` and ``pred_boxes``
(cxcywh, normalized), and the agreement of the top-100 detections as DETR's post-processing forms them (one per
query: the highest non-background class; with 100 queries the top 100 are every query): the fraction of queries
whose label is unchanged. Random weights (no trained checkpoint on this machine), so scores are nearly flat and
label agreement is a pessimistic figure. Run from the repository root::

    python -m benchmarks.bench_bf16 [--height 800 --width 1066] [--iters 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.measure import measure_in_subprocess, print_result


def detection_agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of queries whose top non-background class is the same in ``[B, Q, K+1]`` logits a and b."""
    return float(np.mean(logits_a[..., :-1].argmax(-1) == logits_b[..., :-1].argmax(-1)))


def _differences(fp32: tuple, bf16: tuple) -> dict:
    (logits, boxes), (logits16, boxes16) = fp32, bf16
    return {"max_abs_logits": float(np.abs(logits - logits16).max()),
            "max_abs_boxes": float(np.abs(boxes - boxes16).max()),
            "top100_label_agreement": detection_agreement(logits, logits16)}


def _timed(run, iters: int) -> tuple:
    times, out = [], None
    for _ in range(iters):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, times


def _torch_worker(height: int, width: int, iters: int) -> dict:
    import torch

    from benchmarks.bench_detr import torch_reference

    torch.manual_seed(0)
    model = torch_reference(train=False).eval()
    image = torch.randn(1, 3, height, width)
    pixel_mask = torch.ones(1, height, width, dtype=torch.long)

    def run(bf16: bool):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(image, pixel_mask=pixel_mask)
        return out.logits.float().numpy(), out.pred_boxes.float().numpy()

    run(False), run(True)  # warm-up
    times = {False: [], True: []}
    outputs = {}
    for _ in range(iters):
        for bf16 in (False, True):
            outputs[bf16], spent = _timed(lambda b=bf16: run(b), 1)
            times[bf16] += spent
    return {"fp32_s": times[False], "bf16_s": times[True], **_differences(outputs[False], outputs[True])}


def _mindspore_worker(height: int, width: int, iters: int) -> dict:
    import mindspore as ms

    from benchmarks.bench_detr import mindspore_step
    from src.runtime import init_context

    init_context("CPU")
    _, network = mindspore_step(False, height, width)
    image = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32))
    mask = ms.Tensor(np.zeros((1, height, width), bool))
    network(image, mask)  # compile
    fp32, fp32_s = _timed(lambda: tuple(o.asnumpy() for o in network(image, mask)), iters)
    ms.amp.auto_mixed_precision(network, "O3", dtype=ms.bfloat16)
    try:
        run = lambda: tuple(o.float().asnumpy() for o in network(image.astype(ms.bfloat16), mask))  # noqa: E731
        run()
        bf16, bf16_s = _timed(run, iters)
    except (RuntimeError, TypeError, ValueError) as err:
        return {"fp32_s": fp32_s, "bf16_error": str(err).strip().splitlines()[0]}
    return {"fp32_s": fp32_s, "bf16_s": bf16_s, **_differences(fp32, bf16)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--iters", type=int, default=3, help="timed runs of each precision")
    parser.add_argument("--worker", choices=("ms", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker = _mindspore_worker if args.worker == "ms" else _torch_worker
        print_result(worker(args.height, args.width, args.iters))
        return
    options = ["--height", args.height, "--width", args.width, "--iters", args.iters]
    print(f"DETR-R50 inference, batch 1, {args.height}x{args.width}, s per image: median [min-max] of {args.iters}")
    for side in ("torch", "ms"):
        result = measure_in_subprocess("benchmarks.bench_bf16", side, options)
        line = f"{side}: fp32 {_spread(result['fp32_s'])}"
        if "bf16_error" in result:
            print(f"{line}; bf16 not available: {result['bf16_error']}")
            continue
        speedup = statistics.median(result["fp32_s"]) / statistics.median(result["bf16_s"])
        print(f"{line}; bf16 {_spread(result['bf16_s'])} ({speedup:.2f}x); max |d logits| "
              f"{result['max_abs_logits']:.3g}, max |d boxes| {result['max_abs_boxes']:.3g}, top-100 label "
              f"agreement {result['top100_label_agreement']:.2f}")


def _spread(values) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


if __name__ == "__main__":
    main()
