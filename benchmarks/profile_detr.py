"""Per-op-type time profile of DETR-R50 on equal work: this port (MindSpore graph mode) vs the fair reference.

Both sides run exactly the work of ``bench_detr.py`` (:func:`benchmarks.bench_detr.mindspore_step`,
:func:`benchmarks.bench_detr.torch_step`): inference at batch 1 or the training step at batch 2, fp32, the same
input size, the same 42 trainable backbone tensors (printed). Each side runs in its own subprocess; after
``--warmup`` untimed steps, ``--iters`` steps are profiled and every kernel's time is summed into op groups:

* MindSpore: ``mindspore.profiler.profile`` with ``ProfilerActivity.CPU`` (per-kernel-type totals of the
  compiled graph's CPU kernels, ``FRAMEWORK/cpu_op_type_info_0.csv``, in ms);
* PyTorch: ``torch.profiler.profile`` (self CPU time of every ``aten::`` operator, so nested calls count once).

Groups: convolution forward, backward-input, backward-weight (PyTorch's ``convolution_backward`` computes both in
one operator, so its row is the sum, shown under backward-input, with MindSpore's two rows summed beside it),
matmul/dense (PyTorch's fused CPU attention kernel, ``_scaled_dot_product_*``, which also does the
softmax, counts here), softmax (and its gradient), element-wise, reductions (including LayerNorm and its gradient),
optimizer (AdamW and gradient clipping on the PyTorch side, ``AdamWeightDecay`` on ours; our clipping's norms
land in reductions/element-wise), other (layout copies, casts, matching, ...). Run from the repository root::

    python -m benchmarks.profile_detr --mode infer                            # 800x1066, batch 1
    python -m benchmarks.profile_detr --mode train --height 384 --width 512   # batch 2

Times are per step (the profiled total divided by ``--iters``), kernel time only: they leave out what the
wall-clock figures of ``bench_detr.py`` also include (graph launch, Python, host copies).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import tempfile

from benchmarks.measure import measure_in_subprocess, print_result

GROUPS = ("conv forward", "conv backward-input", "conv backward-weight", "matmul/dense", "softmax", "element-wise",
          "reductions", "optimizer", "other")

# (group, pattern on the MindSpore kernel type), first match wins.
MS_RULES = (
    ("other", r"MaxPool"),
    ("conv backward-input", r"^Conv2DBackpropInput"),
    ("conv backward-weight", r"^Conv2DBackpropFilter"),
    ("conv forward", r"^Conv2D$"),
    ("matmul/dense", r"MatMul|^Dense"),
    ("softmax", r"Softmax"),
    ("optimizer", r"Adam|ApplyMomentum"),
    ("reductions", r"^Reduce|LayerNorm|^Argm|^Norm|^L2Loss|BiasAddGrad|^TopK|^Cumsum"),
    ("element-wise", r"^(Add|AddN|Sub|Mul|RealDiv|Div|Neg|Exp|Log|Sqrt|Rsqrt|Square|Pow|Maximum|Minimum|ReLU|ReluGrad|"
                     r"Sigmoid|SigmoidGrad|Tanh|BiasAdd|Abs|Sign|Less|Greater|Equal|NotEqual|LogicalAnd|LogicalOr|"
                     r"LogicalNot|Select|Dropout\w*|Floor|Erf|Reciprocal|ZerosLike|OnesLike|Clip\w*|\w*Grad)$"),
)
TORCH_RULES = (
    ("other", r"max_pool"),
    ("matmul/dense", r"^aten::_scaled_dot_product"),
    ("conv backward-input", r"^aten::(convolution_backward|mkldnn_convolution_backward\w*)$"),
    ("conv forward", r"^aten::(mkldnn_convolution|_convolution|convolution|thnn_conv2d\w*|_slow_conv2d\w*)$"),
    ("matmul/dense", r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_addmm_activation)$"),
    ("softmax", r"softmax"),
    ("optimizer", r"^aten::(_foreach\w*|_fused_adamw?_?)$|^Optimizer"),
    ("reductions", r"^aten::(sum|mean|norm|linalg_vector_norm|max|min|amax|argmax|topk|native_layer_norm\w*|"
                   r"layer_norm|cumsum|var|std)"),
    ("element-wise", r"^aten::(add|add_|sub|rsub|mul|mul_|div|div_|neg|exp|log|sqrt|rsqrt|pow|maximum|minimum|relu|"
                     r"relu_|threshold_backward|sigmoid|sigmoid_backward|tanh|abs|sign|lt|gt|le|ge|eq|ne|where|"
                     r"clamp\w*|dropout|native_dropout\w*|bernoulli_|floor|erf|reciprocal|fill_|zero_|addcmul_|"
                     r"addcdiv_|lerp_|masked_fill\w*|logical_\w*|bitwise_\w*)$"),
)


def group_of(name: str, rules) -> str:
    """The group of one kernel/operator type name (``other`` when no rule matches)."""
    for group, pattern in rules:
        if re.search(pattern, name):
            return group
    return "other"


def _profile_mindspore(train: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    from mindspore.profiler import ProfilerActivity, profile, tensorboard_trace_handler

    from benchmarks.bench_detr import mindspore_step, mindspore_trainable_backbone
    from src.runtime import init_context

    init_context("CPU")
    step, network = mindspore_step(train, height, width)
    for _ in range(warmup):
        step()
    with tempfile.TemporaryDirectory() as out_dir:
        # analyse_flag=False: the online analysis forks worker processes that copy this process's memory; the
        # per-kernel-type totals it would aggregate are already in the raw cpu_op_type_info CSV.
        with profile(activities=[ProfilerActivity.CPU],
                     on_trace_ready=tensorboard_trace_handler(out_dir, analyse_flag=False)):
            for _ in range(iters):
                step()
        tables = glob.glob(os.path.join(out_dir, "*", "FRAMEWORK", "cpu_op_type_info_*.csv"))
        if not tables:
            raise RuntimeError(f"mindspore.profiler wrote no cpu_op_type_info_*.csv under {out_dir}")
        with open(tables[0], newline="") as f:
            rows = list(csv.DictReader(f))
        per_type = {row["op_type"]: float(row["total_compute_time"]) / iters for row in rows}
        launches = {row["op_type"]: int(row["type_occurrences"]) // iters for row in rows}
    return {"per_type_ms": per_type, "launches_per_step": launches,
            "trainable_backbone_tensors": len(mindspore_trainable_backbone(network))}


def _profile_torch(train: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    import torch

    from benchmarks.bench_detr import torch_step, torch_trainable_backbone

    step, model = torch_step(train, height, width)
    for _ in range(warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            step()
    per_type = {e.key: e.self_cpu_time_total / 1e3 / iters for e in prof.key_averages() if e.self_cpu_time_total}
    return {"per_type_ms": per_type, "trainable_backbone_tensors": len(torch_trainable_backbone(model)),
            "threads": torch.get_num_threads()}


def grouped(per_type_ms: dict, rules) -> dict:
    """Sum per-type milliseconds into :data:`GROUPS`."""
    out = dict.fromkeys(GROUPS, 0.0)
    for name, ms in per_type_ms.items():
        out[group_of(name, rules)] += ms
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="also list the N most expensive op types per side")
    parser.add_argument("--worker", choices=("ms", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    train = args.mode == "train"
    if args.worker:
        runner = _profile_mindspore if args.worker == "ms" else _profile_torch
        print_result(runner(train, args.height, args.width, args.warmup, args.iters))
        return
    options = ["--mode", args.mode, "--height", args.height, "--width", args.width, "--warmup", args.warmup,
               "--iters", args.iters]
    ms_run = measure_in_subprocess("benchmarks.profile_detr", "ms", options)
    pt_run = measure_in_subprocess("benchmarks.profile_detr", "torch", options)
    ms_groups, pt_groups = grouped(ms_run["per_type_ms"], MS_RULES), grouped(pt_run["per_type_ms"], TORCH_RULES)
    print(f"DETR-R50 {args.mode} (batch {2 if train else 1}), {args.height}x{args.width}, fp32, ms per step "
          f"({args.iters} profiled after {args.warmup} warm-up); trainable backbone tensors: MindSpore "
          f"{ms_run['trainable_backbone_tensors']}, PyTorch {pt_run['trainable_backbone_tensors']}")
    print("| op group | MindSpore ms | PyTorch ms | MS - PT ms |\n| --- | --- | --- | --- |")
    for group in GROUPS:
        a, b = ms_groups[group], pt_groups[group]
        if group == "conv backward-input" and train:
            a += ms_groups["conv backward-weight"]
            group = "conv backward (input + weight)"
        elif group == "conv backward-weight" and train:
            group = "  of which MindSpore's backward-weight"
            b = float("nan")
        print(f"| {group} | {a:.0f} | {b:.0f} | {a - b:+.0f} |")
    print(f"| total | {sum(ms_groups.values()):.0f} | {sum(pt_groups.values()):.0f} | "
          f"{sum(ms_groups.values()) - sum(pt_groups.values()):+.0f} |")
    for side, run, rules in (("MindSpore", ms_run, MS_RULES), ("PyTorch", pt_run, TORCH_RULES)):
        top = sorted(run["per_type_ms"].items(), key=lambda kv: -kv[1])[:args.top]
        print(f"\n{side} top {args.top} op types (ms per step, group): " +
              ", ".join(f"{name} {ms:.0f} ({group_of(name, rules)})" for name, ms in top))


if __name__ == "__main__":
    main()
