"""Focus-DETR R50 inference with and without foreground token selection: images/s, peak memory, encoder GFLOPs.

The point of Focus-DETR (Zheng et al., ICCV 2023) is a cheaper encoder: each layer updates only the
cascade-selected foreground tokens (50% of the tokens, then 80/60/60/40/20% of those) and runs self-attention
over 300 of them, where DINO's encoder runs deformable self-attention over every token in every layer. This
benchmark measures, in one run and at one input size (default 800x1333, batch 1, graph mode, eval mode):

* ``focus``: ``configs/focus_detr/focus_detr_r50_4scale_12ep.yaml`` as published;
* ``dense``: the same config with ``model.token_selection=false``, the DINO-equivalent encoder
  (:class:`src.models.focus_detr.encoder.FocusDETREncoder`), everything else unchanged;

and prints the ratios. Timing and memory follow ``benchmarks/bench_detr.py`` (its helpers are reused): every
measurement runs in its own subprocess so that the peak resident set size (``ru_maxrss``) is that measurement's
alone, reported with the RSS after imports and their difference; throughput excludes the warm-up iterations
(which include graph compilation, timed separately). Random weights and a random image: the cost of every
layer is fixed by the static shapes, not by the values (the selection keeps a fixed number of tokens).

It also prints an analytical estimate of the encoder's GFLOPs for both variants (:func:`encoder_gflops`), so the
encoder saving is visible even where the backbone dominates the measured time.

``--train VARIANT ...`` measures the training step instead (:func:`run_train`: the trainer's ``TrainStep``, batch
``--batch``, graph mode): the RSS after building, after ``compile`` and after each of ``--iters`` steps, one process
per variant of :data:`TRAIN_VARIANTS` (the recipe with one part removed: backbone frozen, no denoising, no auxiliary
losses, one decoder layer, one encoder layer), to find where training memory goes. Run from the repository root::

    python -m benchmarks.bench_focus_detr [--height 800 --width 1333] [--warmup 1] [--iters 3]
    python -m benchmarks.bench_focus_detr --train full frozen dec1 --height 384 --width 640 --batch 1 --iters 3
"""

import argparse
import json
import os
import sys
from typing import Sequence, Tuple

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result, rss_mb, time_steps

CONFIG = os.path.join("configs", "focus_detr", "focus_detr_r50_4scale_12ep.yaml")
MEASUREMENTS = ("focus", "dense")
TRAIN_VARIANTS = {
    "full": [],
    "frozen": ["model.train_backbone=false"],
    "nodn": ["model.dn_number=0"],
    "noaux": ["model.aux_loss=false"],
    "dec1": ["model.dec_layers=1"],
    "enc1": ["model.enc_layers=1"],
}
"""``--train`` variants: config overrides of the recipe, each removing one part of the training graph."""


def encoder_gflops(spatial_shapes: Sequence[Tuple[int, int]], model_cfg: dict, token_selection: bool) -> float:
    """Multiply-add count x 2 of the encoder's matrix products and deformable sampling, in GFLOPs (batch 1).

    Counted per layer with ``N`` tokens, ``q`` updated queries, width ``C``, FFN width ``F``, ``L`` levels, ``P``
    points, ``h`` heads: value projection ``N C^2`` (the value is every token in both variants); sampling offsets
    ``q C (2 h L P)``; attention weights ``q C (h L P)``; bilinear sampling ``4 q L P C`` plus weighting
    ``q L P C``; output projection ``q C^2``; FFN ``2 q C F``. Dense: ``q = N``. Focus: ``q = k_j`` from
    :func:`src.models.focus_detr.fts.cascade_topk_sizes`, plus per layer the MCSP class head ``k_j C K`` and the
    OESM attention over ``m = min(oesm_topk, k_j)`` tokens (``4 m C^2 + 2 m^2 C``), plus once the foreground
    selector (``enc_output`` ``N C^2`` and the mask predictor ``N (C^2 + C^2/2 + C^2/8 + C/4)``). Layer norms,
    softmax, activations, top-k, gathers and scatters are not counted.

    Args:
        spatial_shapes: ``(H_l, W_l)`` per level.
        model_cfg: the config's ``model`` section (``embed_dim``, ``num_heads``, ``enc_layers``,
            ``feedforward_dim``, ``num_points``, ``num_classes``, ``rho``, ``cascade``, ``oesm_topk``).
        token_selection: Focus-DETR (True) or the dense DINO-equivalent encoder (False).

    Returns:
        float: GFLOPs (1e9 floating-point operations).
    """
    from src.models.focus_detr.fts import cascade_topk_sizes

    c, f = model_cfg["embed_dim"], model_cfg["feedforward_dim"]
    heads, points, levels = model_cfg["num_heads"], model_cfg["num_points"], len(spatial_shapes)
    tokens = sum(h * w for h, w in spatial_shapes)
    layers = model_cfg["enc_layers"]

    def deformable_layer(queries: int) -> int:
        sample = heads * levels * points
        return (tokens * c * c + queries * c * (3 * sample) + 5 * queries * levels * points * c + queries * c * c
                + 2 * queries * c * f)

    if not token_selection:
        macs = layers * deformable_layer(tokens)
    else:
        sizes = cascade_topk_sizes(tokens, model_cfg["rho"], model_cfg["cascade"])[:layers]
        macs = tokens * c * c + tokens * (c * c + c * c // 2 + c * c // 8 + c // 4)
        for k in sizes:
            m = min(model_cfg["oesm_topk"], k)
            macs += deformable_layer(k) + k * c * model_cfg["num_classes"] + 4 * m * c * c + 2 * m * m * c
    return 2.0 * macs / 1e9


def run(token_selection: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    """Build the R50 model (``token_selection`` as given) and time batch-1 inference; runs in a worker process."""
    import mindspore as ms

    from src.config import load_config
    from src.data.catalog import resolve_num_classes
    from src.models import build_model
    from src.models.focus_detr.criterion import level_shapes_of
    from src.runtime import init_context

    init_context("CPU")  # graph mode; also selects oneDNN's fast AVX2 convolutions (see src/runtime.py)
    base_rss = rss_mb()
    cfg = resolve_num_classes(load_config(CONFIG, [f"model.token_selection={str(token_selection).lower()}"]))
    network = build_model(cfg).network
    network.set_train(False)
    image = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32))
    mask = ms.Tensor(np.zeros((1, height, width), bool))

    def step():
        network(image, mask)[0].asnumpy()

    warm, per_step = time_steps(step, warmup, iters)
    return {"warmup_s": warm, "step_s": per_step, "images_per_s": 1.0 / per_step, "base_rss_mb": base_rss,
            "peak_rss_mb": peak_mb(),
            "encoder_gflops": encoder_gflops(level_shapes_of((height, width), 4), cfg["model"], token_selection)}


def run_train(variant: str, height: int, width: int, batch: int, iters: int) -> dict:
    """RSS (MiB) after build, after ``compile`` and after each step of one Focus-DETR R50 training step variant.

    The step is the trainer's (:class:`src.engine.train_step.TrainStep` over ``build_model(cfg).train_network``,
    AdamW, the recipe's clip) on a random image with :func:`benchmarks.bench_detr._targets`' random boxes; runs in
    a worker process (graph mode). ``variant`` is a key of :data:`TRAIN_VARIANTS`.
    """
    import time

    import mindspore as ms

    from benchmarks.bench_detr import _targets
    from src.config import load_config
    from src.data.catalog import resolve_num_classes
    from src.engine.optim.adamw import build_optimizer
    from src.engine.train_step import TrainStep
    from src.models import build_model
    from src.runtime import init_context

    init_context("CPU")
    result = {"variant": variant, "batch": batch, "base_rss_mb": rss_mb()}
    cfg = resolve_num_classes(load_config(CONFIG, TRAIN_VARIANTS[variant]))
    detector = build_model(cfg)
    optimizer = build_optimizer(detector.network, cfg["train"], steps_per_epoch=1000)
    step_cell = TrainStep(detector.train_network, optimizer, clip_max_norm=cfg["train"]["clip_max_norm"])
    step_cell.set_train(True)
    image = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32))
    mask = ms.Tensor(np.zeros((batch, height, width), bool))
    targets = [ms.Tensor(t) for t in _targets(batch, cfg["data"]["max_boxes"])]
    result["built_rss_mb"] = rss_mb()
    print(f"progress {result}", file=sys.stderr, flush=True)  # visible if the watchdog kills the step
    start = time.perf_counter()
    step_cell.compile(image, mask, *targets)
    result["compile_s"] = time.perf_counter() - start
    result["compiled_rss_mb"] = rss_mb()
    print(f"progress {result}", file=sys.stderr, flush=True)
    for i in range(iters):
        start = time.perf_counter()
        step_cell(image, mask, *targets)[0].asnumpy()
        result[f"step{i}_s"] = time.perf_counter() - start
        result[f"step{i}_rss_mb"] = rss_mb()
        print(f"progress {result}", file=sys.stderr, flush=True)
    result["peak_rss_mb"] = peak_mb()
    return result


def _measure(name: str, args) -> dict:
    return measure_in_subprocess("benchmarks.bench_focus_detr", name, ["--height", args.height, "--width", args.width,
                                                                       "--warmup", args.warmup, "--iters", args.iters,
                                                                       "--batch", args.batch])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (include compilation)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations")
    parser.add_argument("--train", nargs="+", choices=tuple(TRAIN_VARIANTS), metavar="VARIANT",
                        help=f"measure training-step RSS instead, one process per variant: {', '.join(TRAIN_VARIANTS)}")
    parser.add_argument("--batch", type=int, default=2, help="training batch size (--train only)")
    parser.add_argument("--worker", choices=MEASUREMENTS + tuple(f"train_{v}" for v in TRAIN_VARIANTS),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker and args.worker.startswith("train_"):
        print_result(run_train(args.worker[len("train_"):], args.height, args.width, args.batch, args.iters))
        return
    if args.worker:
        result = run(args.worker == "focus", args.height, args.width, args.warmup, args.iters)
        print_result(result)
        return

    if args.train:
        print(f"Focus-DETR R50 4-scale training step, batch {args.batch}, {args.height}x{args.width}, RSS MB")
        for variant in args.train:
            print(json.dumps(_measure(f"train_{variant}", args)), flush=True)
        return
    results = {}
    for name in MEASUREMENTS:
        results[name] = _measure(name, args)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    focus, dense = results["focus"], results["dense"]
    print(f"\nFocus-DETR R50 4-scale inference, batch 1, {args.height}x{args.width}, CPU ({os.cpu_count()} cores), "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    print(f"{'measurement':<32}{'Focus':>12}{'dense (DINO)':>14}{'Focus/dense':>13}")
    rows = [
        ("images/s", "images_per_s", "{:.3f}"),
        ("s/image", "step_s", "{:.2f}"),
        ("warm-up s (compile)", "warmup_s", "{:.1f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("encoder GFLOPs (estimate)", "encoder_gflops", "{:.1f}"),
    ]
    for title, key, fmt in rows:
        print(f"{title:<32}{fmt.format(focus[key]):>12}{fmt.format(dense[key]):>14}{focus[key] / dense[key]:>13.2f}")
    # Papers measuring with fvcore (DINO, Focus-DETR) count one multiply-add as one "FLOP": half the GFLOPs.
    macs_title = "encoder GMACs (fvcore 'FLOPs')"
    print(f"{macs_title:<32}{focus['encoder_gflops'] / 2:>12.1f}{dense['encoder_gflops'] / 2:>14.1f}"
          f"{focus['encoder_gflops'] / dense['encoder_gflops']:>13.2f}")
    growth = (focus["peak_rss_mb"] - focus["base_rss_mb"], dense["peak_rss_mb"] - dense["base_rss_mb"])
    print(f"{'peak - base MB':<32}{growth[0]:>12.0f}{growth[1]:>14.0f}{growth[0] / growth[1]:>13.2f}")


if __name__ == "__main__":
    main()
