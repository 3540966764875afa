"""DETR-R50 speed and memory: this MindSpore port (graph mode) vs transformers' DetrForObjectDetection (PyTorch).

Measures, at one input size (default 800x1066, DETR's typical COCO eval shape):

* inference, batch 1, eval mode;
* one training step, batch 2: forward, DETR loss with auxiliary decoder losses and Hungarian matching,
  backward, gradient clipping at 0.1 and AdamW (backbone at lr 1e-5), like DETR's recipe.

Each measurement runs in its own subprocess so that peak memory is that measurement's alone: the peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which also covers native allocations) is reported
together with the RSS before the model is built (after imports), and their difference. Throughput excludes
warm-up iterations (which include MindSpore's graph compilation, timed separately). Both sides use random
weights: speed does not depend on the values. Run from the repository root::

    python -m benchmarks.bench_detr [--iters 3] [--height 800 --width 1066] [--only ms_infer torch_infer]

Memory note: on CPU, MindSpore 2.10's graph-mode train step at 800x1066, batch 2, peaks at about 11 GB RSS; on
smaller hosts run the training rows at a reduced size (``--height 384 --width 512 --only torch_train ms_train``).
"""

import argparse
import json
import os

import numpy as np

from benchmarks.measure import measure_in_subprocess, peak_mb, print_result, rss_mb, time_steps

MEASUREMENTS = ("ms_infer", "torch_infer", "torch_train", "ms_train")
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


def run_mindspore(train: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    import mindspore as ms

    from src.config import load_config
    from src.engine.lr_schedule import build_optimizer
    from src.engine.train_step import TrainStep
    from src.models.detr.criterion import build_criterion
    from src.models.detr.detr import build_detr
    from src.runtime import init_context

    init_context("CPU")  # graph mode; also selects oneDNN's fast AVX2 convolutions (see src/runtime.py)
    base_rss = rss_mb()
    cfg = load_config(os.path.join("configs", "detr", "detr_r50.yaml"))
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    network = build_detr(**model_cfg)
    batch = 2 if train else 1
    image = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32))
    mask = ms.Tensor(np.zeros((batch, height, width), bool))
    if train:
        criterion = build_criterion(model_cfg["num_classes"], aux_loss=model_cfg["aux_loss"], **cfg["loss"])
        optimizer = build_optimizer(network, cfg["train"], steps_per_epoch=1000)
        step_cell = TrainStep(network, criterion, optimizer, clip_max_norm=cfg["train"]["clip_max_norm"])
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

    warm, per_step = time_steps(step, warmup, iters)
    return {"batch": batch, "warmup_s": warm, "step_s": per_step, "images_per_s": batch / per_step,
            "base_rss_mb": base_rss, "peak_rss_mb": peak_mb()}


def run_torch(train: bool, height: int, width: int, warmup: int, iters: int) -> dict:
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(0)
    base_rss = rss_mb()
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, num_labels=91,
                        backbone_config=ResNetConfig(out_features=["stage4"]), auxiliary_loss=train)
    model = DetrForObjectDetection(config)
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

    warm, per_step = time_steps(step, warmup, iters)
    return {"batch": batch, "warmup_s": warm, "step_s": per_step, "images_per_s": batch / per_step,
            "base_rss_mb": base_rss, "peak_rss_mb": peak_mb(), "threads": torch.get_num_threads()}


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
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS),
                        help="run a subset (the side-by-side table needs both sides of a row)")
    parser.add_argument("--worker", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    results = {}
    for name in args.only:
        results[name] = _measure(name, args)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    print(f"\nDETR-R50, {args.height}x{args.width}, CPU ({os.cpu_count()} cores), "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    print(f"{'measurement':<34}{'MindSpore':>12}{'PyTorch':>12}{'MS/PT':>8}")
    for mode, label in (("infer", "inference bs1"), ("train", "train step bs2")):
        if f"ms_{mode}" not in results or f"torch_{mode}" not in results:
            continue
        ms_res, pt_res = results[f"ms_{mode}"], results[f"torch_{mode}"]
        rows = [
            (f"{label}: images/s", ms_res["images_per_s"], pt_res["images_per_s"], "{:.3f}"),
            (f"{label}: s/step", ms_res["step_s"], pt_res["step_s"], "{:.2f}"),
            (f"{label}: warm-up s (compile)", ms_res["warmup_s"], pt_res["warmup_s"], "{:.1f}"),
            (f"{label}: peak RSS MB", ms_res["peak_rss_mb"], pt_res["peak_rss_mb"], "{:.0f}"),
            (f"{label}: peak - base MB", ms_res["peak_rss_mb"] - ms_res["base_rss_mb"],
             pt_res["peak_rss_mb"] - pt_res["base_rss_mb"], "{:.0f}"),
        ]
        for title, a, b, fmt in rows:
            print(f"{title:<34}{fmt.format(a):>12}{fmt.format(b):>12}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
