"""Cost of unpadded evaluation (``eval.unpadded: true``, the default) against bucketed graph mode, per model.

Runs the evaluation loop of ``eval.py`` (``src.evaluation.evaluate._predict``: MindRecord read, eval resize, network,
post-process) over the first N real coco_tiny val2017 images at the config's evaluation size, batch 1, random
weights (speed does not depend on the values), once per mode in its own process:

* ``bucketed``: graph mode, each image padded to its ``data.eval_pad_buckets`` entry (one compile per bucket used);
* ``unpadded``: each image at its own size (``src.evaluation.unpadded``: the dynamic-shape graphs compile once).

Prints one ``RESULT {json}`` line per mode: seconds for the first image (compilation included), median seconds per
later image (min-max), graphs compiled, peak RSS. Run from the repository root::

    python -m benchmarks.bench_unpadded --config configs/detr/detr_r50.yaml [--num_images 6] [--set KEY=VALUE ...]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.measure import measure_in_subprocess, peak_mb

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bucketed", "unpadded")


def worker(config: str, mode: str, num_images: int, root: str, overrides: list) -> dict:
    import mindspore as ms
    import mindspore.graph.api as graph_api

    from src.config import load_config
    from src.evaluation.evaluate import _predict
    from src.models import build_model
    from src.runtime import init_context

    init_context("CPU")
    cfg = load_config(config, [*overrides, f"eval.unpadded={str(mode == 'unpadded').lower()}", "eval.batch_size=1"])
    ms.set_seed(0)
    net = build_model(cfg).inference_network
    jit_before = len(graph_api.ms_compile_cache)
    times = []
    with tempfile.TemporaryDirectory() as mindrecord:
        start = time.perf_counter()
        for _ in _predict(net, cfg, root, mindrecord, num_images):
            now = time.perf_counter()
            times.append(now - start)
            start = now
    # Graph mode keeps a Cell's compiled phases in its compile_cache; jit graphs (unpadded) in ms_compile_cache.
    compiles = len(net.compile_cache) + len(graph_api.ms_compile_cache) - jit_before
    later = times[1:]
    return {"config": config, "mode": mode, "images": len(times), "first_s": round(times[0], 2),
            "median_s": round(statistics.median(later), 2), "min_s": round(min(later), 2),
            "max_s": round(max(later), 2), "compiles": compiles, "peak_rss_mb": round(peak_mb())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--num_images", type=int, default=6)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "coco_tiny"))
    parser.add_argument("--only", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (e.g. sizes)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.config, args.worker, args.num_images, args.root, args.set)
        print("RESULT " + json.dumps(result), flush=True)
        return
    for mode in args.only:
        result = measure_in_subprocess("benchmarks.bench_unpadded", mode,
                                       ["--config", args.config, "--num_images", args.num_images, "--root", args.root,
                                        "--set", *args.set])
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
