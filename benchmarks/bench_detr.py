"""DETR-R50 speed and memory: this MindSpore port (graph mode) vs transformers' DetrForObjectDetection (PyTorch).

Measures, at one input size (default 800x1066, DETR's typical COCO eval shape):

* inference, batch 1, eval mode;
* one training step, batch 2: forward, DETR loss with auxiliary decoder losses and Hungarian matching,
  backward, gradient clipping at 0.1 and AdamW (backbone at lr 1e-5), like DETR's recipe.

Both sides train the same tensors: DETR freezes the stem and ``layer1`` and trains the convolutions of
``layer2``-``layer4`` (42 tensors in R50; frozen batch norm has none). transformers' DETR with a native
``ResNetConfig`` backbone freezes its whole backbone (its name filter looks for ``stage.1`` while its ResNet
says ``stages.1``), so :func:`torch_reference` makes ``stages.1``-``stages.3`` trainable; both counts are
printed with every training row and ``tests/test_bench_fairness.py`` checks the two sets name by name. Both
drop out the same tensors at DETR's rate 0.1 (attention weights, FFN hidden activations, residual branches; the
reference also drops its encoder and decoder inputs, two small tensors DETR leaves alone).

Each measurement runs in its own subprocess so that peak memory is that measurement's alone: the peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which also covers native allocations) is reported
together with the RSS before the model is built (after imports), and their difference. Throughput excludes
warm-up iterations (which include MindSpore's graph compilation, timed separately). Both sides use random
weights: speed does not depend on the values. Run from the repository root::

    python -m benchmarks.bench_detr [--iters 3] [--repeats 2] [--height 800 --width 1066] [--only ms_infer torch_infer]

With ``--repeats R`` every measurement runs R times, the two sides alternated (A B A B), and the table gives
medians with the min-max range, since a shared machine's load moves either side by 15% or more.

Memory note: on CPU, MindSpore 2.10's graph-mode train step at 800x1066, batch 2, peaks at about 9 GB RSS; on
smaller hosts run the training rows at a reduced size (``--height 384 --width 512 --only torch_train ms_train``).
"""

import argparse
import json
import os
import re
import statistics

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result, rss_mb, time_steps

MEASUREMENTS = ("ms_infer", "torch_infer", "ms_train", "torch_train")
TRAINED_TORCH_STAGE = re.compile(r"\.encoder\.stages\.[123]\.")  # transformers' ResNet stage of layer2-4
DETR_DROPOUT = 0.1  # facebookresearch/detr's transformer dropout, configs/defaults.yaml model.dropout
NUM_BOXES = 6  # valid targets per training image; max_boxes padding as in the configs


def _targets(batch: int, max_boxes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    labels = np.zeros((batch, max_boxes), np.int32)
    valid = np.zeros((batch, max_boxes), bool)
    boxes[:, :NUM_BOXES, :2] = rng.uniform(0.2, 0.8, (batch, NUM_BOXES, 2))
    boxes[:, :NUM_BOXES, 2:] = rng.uniform(0.05, 0.3, (batch, NUM_BOXES, 2))
    labels[:, :NUM_BOXES] = rng.integers(1, 91, (batch, NUM_BOXES))
    valid[:, :NUM_BOXES] = True
    return boxes, labels, valid


def mindspore_trainable_backbone(network) -> list:
    """Names of the backbone parameters this port's DETR trains (``requires_grad``), in network order."""
    return [p.name for p in network.trainable_params() if p.name.startswith("backbone.")]


def torch_reference(train: bool):
    """transformers' ``DetrForObjectDetection`` (R50, 91 labels) training the backbone tensors DETR trains.

    DETR's transformer (``nn.MultiheadAttention(dropout=0.1)`` and its FFN) drops the attention weights and the
    FFN's hidden activations as well as the residual branches; transformers' defaults drop only the residual
    branches (``attention_dropout`` and ``activation_dropout`` are 0), which would spare the reference the
    dropout of every ``[B, h, Lq, Lk]`` attention map, so all three are set to DETR's 0.1.

    Returns:
        The model, with ``requires_grad`` True exactly on the convolution weights of ``stages.1``-``stages.3``
        (torchvision's ``layer2``-``layer4``) among the backbone parameters, as facebookresearch/detr's
        ``models/backbone.py`` does with ``lr_backbone > 0``.
    """
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, num_labels=91,
                        backbone_config=ResNetConfig(out_features=["stage4"]), auxiliary_loss=train,
                        dropout=DETR_DROPOUT, attention_dropout=DETR_DROPOUT, activation_dropout=DETR_DROPOUT)
    model = DetrForObjectDetection(config)
    for name, param in model.named_parameters():
        if "backbone" in name:
            param.requires_grad = TRAINED_TORCH_STAGE.search(name) is not None
    return model


def torch_trainable_backbone(model) -> list:
    """Names of the reference's trainable backbone parameters, in module order."""
    return [n for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]


def mindspore_step(train: bool, height: int, width: int):
    """This port's DETR-R50 (graph mode, random weights) and a closure running one inference (batch 1) or one
    training step (batch 2) on a random ``[B, 3, height, width]`` float32 image; returns ``(step, network)``.
    Call after :func:`src.runtime.init_context`."""
    import mindspore as ms

    from src.config import load_config
    from src.data.catalog import resolve_num_classes
    from src.engine.optim.adamw import build_optimizer
    from src.engine.train_step import TrainStep
    from src.models.contract import NetWithCriterion
    from src.models.detr.criterion import build_criterion
    from src.models.detr.model import build_detr

    cfg = resolve_num_classes(load_config(os.path.join("configs", "detr", "detr_r50.yaml")))
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    network = build_detr(**model_cfg)
    batch = 2 if train else 1
    image = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32))
    mask = ms.Tensor(np.zeros((batch, height, width), bool))
    if train:
        criterion = build_criterion(model_cfg["num_classes"], aux_loss=model_cfg["aux_loss"], **cfg["loss"])
        optimizer = build_optimizer(network, cfg["train"], steps_per_epoch=1000)
        step_cell = TrainStep(NetWithCriterion(network, criterion), optimizer,
                              clip_max_norm=cfg["train"]["clip_max_norm"])
        step_cell.set_train(True)
        targets = [ms.Tensor(t) for t in _targets(batch, cfg["data"]["max_boxes"])]

        def step():
            loss, _, _ = step_cell(image, mask, *targets)
            loss.asnumpy()
    else:
        network.set_train(False)

        def step():
            logits, _ = network(image, mask)
            logits.asnumpy()

    return step, network


def run_mindspore(train: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    from src.runtime import init_context

    init_context("CPU")  # graph mode; also selects oneDNN's fast AVX2 convolutions (see src/runtime.py)
    base_rss = rss_mb()
    step, network = mindspore_step(train, height, width)
    warm, per_step = time_steps(step, warmup, iters)
    batch = 2 if train else 1
    return {"batch": batch, "warmup_s": warm, "step_s": per_step, "images_per_s": batch / per_step,
            "base_rss_mb": base_rss, "peak_rss_mb": peak_mb(),
            "trainable_backbone_tensors": len(mindspore_trainable_backbone(network))}


def torch_step(train: bool, height: int, width: int):
    """The reference (:func:`torch_reference`, seed 0) and a closure running the same work as
    :func:`mindspore_step`; returns ``(step, model)``."""
    import torch

    torch.manual_seed(0)
    model = torch_reference(train)
    batch = 2 if train else 1
    image = torch.randn(batch, 3, height, width)
    pixel_mask = torch.ones(batch, height, width, dtype=torch.long)
    if train:
        model.train()
        backbone = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
        rest = [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]
        optimizer = torch.optim.AdamW([{"params": rest, "lr": 1e-4}, {"params": backbone, "lr": 1e-5}],
                                      weight_decay=1e-4)
        boxes, labels, _ = _targets(batch, NUM_BOXES)
        targets = [{"class_labels": torch.from_numpy(labels[i].astype(np.int64)),
                    "boxes": torch.from_numpy(boxes[i])} for i in range(batch)]

        def step():
            loss = model(image, pixel_mask=pixel_mask, labels=targets).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model(image, pixel_mask=pixel_mask)

    return step, model


def run_torch(train: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    import torch

    base_rss = rss_mb()
    step, model = torch_step(train, height, width)
    warm, per_step = time_steps(step, warmup, iters)
    batch = 2 if train else 1
    return {"batch": batch, "warmup_s": warm, "step_s": per_step, "images_per_s": batch / per_step,
            "base_rss_mb": base_rss, "peak_rss_mb": peak_mb(), "threads": torch.get_num_threads(),
            "trainable_backbone_tensors": len(torch_trainable_backbone(model))}


def _worker(args) -> None:
    runner = run_mindspore if args.worker.startswith("ms") else run_torch
    result = runner(args.worker.endswith("train"), args.height, args.width, args.warmup, args.iters)
    print_result(result)


def _measure(name: str, args) -> dict:
    return measure_in_subprocess("benchmarks.bench_detr", name, ["--height", args.height, "--width", args.width,
                                                                 "--warmup", args.warmup, "--iters", args.iters])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (include compilation)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations")
    parser.add_argument("--repeats", type=int, default=1, help="alternated repetitions of every measurement")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS),
                        help="run a subset (the side-by-side table needs both sides of a row)")
    parser.add_argument("--worker", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    runs = {name: [] for name in args.only}
    for _ in range(args.repeats):
        for name in args.only:  # MEASUREMENTS alternates the two sides
            runs[name].append(_measure(name, args))
            print(f"{name}: {json.dumps(runs[name][-1])}", flush=True)
    print(f"\nDETR-R50, {args.height}x{args.width}, CPU ({os.cpu_count()} cores), {args.iters} timed iterations "
          f"after {args.warmup} warm-up, {args.repeats} alternated repeat(s): median [min-max]")
    print(f"{'measurement':<34}{'MindSpore':>22}{'PyTorch':>22}{'MS/PT':>8}")
    for mode, label in (("infer", "inference bs1"), ("train", "train step bs2")):
        if f"ms_{mode}" not in runs or f"torch_{mode}" not in runs:
            continue
        ms_runs, pt_runs = runs[f"ms_{mode}"], runs[f"torch_{mode}"]
        if mode == "train":
            print(f"{label}: trainable backbone tensors  MindSpore {ms_runs[0]['trainable_backbone_tensors']}, "
                  f"PyTorch {pt_runs[0]['trainable_backbone_tensors']}")
        rows = [
            (f"{label}: images/s", "images_per_s", "{:.3f}"),
            (f"{label}: s/step", "step_s", "{:.2f}"),
            (f"{label}: warm-up s (compile)", "warmup_s", "{:.1f}"),
            (f"{label}: peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ]
        for title, key, fmt in rows:
            a, b = _spread([r[key] for r in ms_runs], fmt), _spread([r[key] for r in pt_runs], fmt)
            ratio = statistics.median(r[key] for r in ms_runs) / statistics.median(r[key] for r in pt_runs)
            print(f"{title:<34}{a:>22}{b:>22}{ratio:>8.2f}")


def _spread(values, fmt: str) -> str:
    """``median [min-max]`` of repeated measurements, formatted with ``fmt``."""
    text = fmt.format(statistics.median(values))
    return text if len(values) == 1 else f"{text} [{fmt.format(min(values))}-{fmt.format(max(values))}]"

if __name__ == "__main__":
    main()
