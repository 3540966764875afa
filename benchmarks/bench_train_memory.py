"""Where DETR-R50 training memory goes on CPU: resident memory by phase, by part of the graph, and per convolution.

Two measurements, each in its own subprocess (peak RSS per process, as ``bench_detr.py``):

* ``detr``: one DETR-R50 training step (``configs/detr/detr_r50.yaml``, batch 2, the step ``bench_detr.py``
  times) with the RSS after building the model, after ``Cell.compile`` and after each step, for a variant:
  ``full``; ``frozen`` (``train_backbone=False``: no backbone gradient); ``noaux`` (no auxiliary decoder losses);
  ``enc0`` (no encoder layer); ``recompute`` (``Cell.recompute()`` on every bottleneck of ``layer1``-``layer4``).
  ``--pynative`` runs the same step eagerly.
* ``convs``: ``N`` identical 3x3 convolutions (64 channels, batch 2, 200x267, as ``layer1`` of an 800x1066
  image) with ReLU, forward and gradients with respect to the weights and the input, in graph mode or PyNative:
  how the resident memory grows with the number of convolution nodes in one graph.

Run from the repository root (the 800x1066 ``detr`` rows need about 9 GB)::

    python -m benchmarks.bench_train_memory detr --variants full frozen --height 384 --width 512
    python -m benchmarks.bench_train_memory convs --counts 1 5 10 [--pynative] [--conv forward]
"""

import argparse
import json
import time

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result, rss_mb

VARIANTS = ("full", "frozen", "noaux", "enc0", "recompute")


def run_detr(variant: str, height: int, width: int, pynative: bool, iters: int) -> dict:
    """RSS (MiB) after build, after compile and after each step (and its seconds), and the peak, for one DETR-R50
    step variant."""
    import mindspore as ms

    from benchmarks.bench_detr import _targets
    from src.config import load_config
    from src.data.catalog import resolve_num_classes
    from src.engine.optim.adamw import build_optimizer
    from src.engine.train_step import TrainStep
    from src.models.contract import NetWithCriterion
    from src.models.detr.criterion import build_criterion
    from src.models.detr.model import build_detr
    from src.runtime import init_context

    init_context("CPU", pynative=pynative)
    result = {"variant": variant, "pynative": pynative, "base_rss_mb": rss_mb()}
    cfg = resolve_num_classes(load_config("configs/detr/detr_r50.yaml"))
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    model_cfg.update({"frozen": {"train_backbone": False}, "noaux": {"aux_loss": False},
                      "enc0": {"enc_layers": 0}}.get(variant, {}))
    network = build_detr(**model_cfg)
    if variant == "recompute":
        body = network.backbone.body
        for layer in (body.layer1, body.layer2, body.layer3, body.layer4):
            for block in layer:
                block.recompute()
    criterion = build_criterion(model_cfg["num_classes"], aux_loss=model_cfg["aux_loss"], **cfg["loss"])
    optimizer = build_optimizer(network, cfg["train"], steps_per_epoch=1000)
    step_cell = TrainStep(NetWithCriterion(network, criterion), optimizer, clip_max_norm=cfg["train"]["clip_max_norm"])
    step_cell.set_train(True)
    batch = 2
    image = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32))
    mask = ms.Tensor(np.zeros((batch, height, width), bool))
    targets = [ms.Tensor(t) for t in _targets(batch, cfg["data"]["max_boxes"])]
    result["built_rss_mb"] = rss_mb()
    if not pynative:
        start = time.perf_counter()
        step_cell.compile(image, mask, *targets)
        result["compile_s"] = time.perf_counter() - start
        result["compiled_rss_mb"] = rss_mb()
    for i in range(iters):
        start = time.perf_counter()
        step_cell(image, mask, *targets)[0].asnumpy()
        result[f"step{i}_s"] = time.perf_counter() - start
        result[f"step{i}_rss_mb"] = rss_mb()
    result["peak_rss_mb"] = peak_mb()
    return result


def run_convs(count: int, pynative: bool, conv: str) -> dict:
    """RSS growth (MiB) of ``count`` chained 3x3 convolutions: forward only, then forward and gradients.

    ``conv``: ``builtin`` (``nn.Conv2d``, MindSpore's gradient kernels) or ``forward``
    (:class:`benchmarks.forward_grad_conv.ForwardGradConv2d`, gradients from forward convolutions). Also returns the
    median seconds of the last 3 gradient calls.
    """
    import mindspore as ms
    from mindspore import nn, ops

    from benchmarks.forward_grad_conv import ForwardGradConv2d
    from src.runtime import init_context

    init_context("CPU", pynative=pynative)

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.convs = nn.CellList([nn.Conv2d(64, 64, 3, pad_mode="pad", padding=1) for _ in range(count)])
            self.forward_grad = ForwardGradConv2d() if conv == "forward" else None

        def construct(self, x):
            for layer in self.convs:
                if self.forward_grad is None:
                    x = ops.relu(layer(x))
                else:
                    x = ops.relu(self.forward_grad(x, layer.weight, 1, 1, 1))
            return x.sum()

    chain = Chain()
    x = ms.Tensor(np.random.default_rng(0).random((2, 64, 200, 267), dtype=np.float32))
    base = rss_mb()
    for _ in range(2):
        chain(x).asnumpy()
    forward = rss_mb() - base
    grad_fn = ms.value_and_grad(chain, 0, chain.trainable_params())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        grad_fn(x)[0].asnumpy()
        times.append(time.perf_counter() - start)
    return {"count": count, "pynative": pynative, "conv": conv, "forward_growth_mb": forward,
            "grad_growth_mb": rss_mb() - base, "peak_rss_mb": peak_mb(), "grad_s": float(np.median(times[2:]))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("detr", "convs"))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["full"])
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--iters", type=int, default=2, help="training steps after compilation")
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 5, 10], help="convolutions per chain")
    parser.add_argument("--conv", choices=("builtin", "forward"), default="builtin",
                        help="convs: MindSpore's convolution gradients or ForwardGradConv2d's")
    parser.add_argument("--pynative", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.what == "detr":
            print_result(run_detr(args.worker, args.height, args.width, args.pynative, args.iters))
        else:
            print_result(run_convs(int(args.worker), args.pynative, args.conv))
        return
    common = ["--height", args.height, "--width", args.width, "--iters", args.iters, "--conv", args.conv]
    common += ["--pynative"] if args.pynative else []
    items = args.variants if args.what == "detr" else args.counts
    for item in items:
        result = measure_in_subprocess("benchmarks.bench_train_memory", str(item), [args.what, *common])
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
