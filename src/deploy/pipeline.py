"""The offline inference pipeline over the binary-file protocol (see :mod:`src.deploy.bin_io`).

preprocess (a split -> input binaries) -> a runner (MINDIR -> output binaries) -> postprocess (output
binaries -> COCO results, pycocotools stats). The C++ Ascend 310 harness is a second runner of the same
protocol.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from src.deploy.bin_io import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    DeployError,
    TensorSpec,
    image_stem,
    input_specs,
    output_specs,
    read_manifest,
    read_manifest_json,
    read_tensor,
    specs_from_json,
    stem_image_id,
    tensor_path,
    write_manifest,
    write_tensor,
)
from src.evaluation.coco_evaluator import CocoEvaluator
from src.fileio import atomic_write_text

PREPROCESS_COLUMNS = ["image", "mask", "image_id", "orig_size", "img_size"]


def preprocess_split(cfg: dict, coco_path: str | os.PathLike, split: str, output_dir: str | os.PathLike,
                     mindrecord_dir: str | os.PathLike, image_size: Sequence[int] | None = None,
                     max_images: int | None = None) -> list[str]:
    """Write the padded batch-1 inputs of every image of a split, a sidecar per image and the manifests.

    Runs the evaluation road of ``eval.py`` (:func:`src.data.dataset.create_dataset` on ``cfg``'s data with
    ``data.val_split`` = ``split``, eval transforms, batch 1) with the pad buckets replaced by the single export
    shape, so the binaries are the tensors ``eval.py`` feeds the network when its config has that one bucket; the
    MindRecord set in ``mindrecord_dir`` is the one ``eval.py`` uses (e.g. ``coco_val2017_all``).

    Args:
        cfg: the config. image_size: (H, W) of the exported graph; None = the largest eval pad bucket (the rule
            of :func:`src.deploy.export.resolve_image_size`).
        coco_path: dataset root. split: the split to write (a COCO split name for COCO configs).
        mindrecord_dir: MindRecord cache, built on first use.
        max_images: only the first N images of the split (as ``eval.py --max_images``).

    Returns:
        The stems written, in manifest order.

    Raises:
        DeployError: a bad image size. ValueError: an image that does not fit the shape (named by id).
        src.errors.InputError subclasses: invalid dataset files or class lists (named in the message).
    """
    from src.data.dataset import create_dataset
    from src.deploy.export import resolve_image_size

    height, width = resolve_image_size(cfg, image_size)
    data_cfg = {**cfg["data"], "val_split": split, "eval_pad_buckets": [[height, width]]}
    dataset = create_dataset(coco_path, data_cfg, "val", mindrecord_dir, batch_size=1, max_images=max_images)
    specs = input_specs(height, width)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stems = []
    for image, mask, image_id, orig_size, img_size in dataset.create_tuple_iterator(
            columns=PREPROCESS_COLUMNS, num_epochs=1, output_numpy=True):
        if int(image_id[0]) < 0:
            continue
        stem = image_stem(image_id[0])
        for index, array in enumerate((image, mask, orig_size.astype(np.int32))):
            write_tensor(tensor_path(output_dir, stem, index), array, specs[index])
        (orig_h, orig_w), (new_h, new_w) = orig_size[0].tolist(), img_size[0].tolist()
        sidecar = {"image_id": int(image_id[0]), "orig_size": [orig_h, orig_w], "resized_size": [new_h, new_w],
                   "scale": [new_h / orig_h, new_w / orig_w], "input_size": [height, width]}
        atomic_write_text(output_dir / f"{stem}.json", json.dumps(sidecar, indent=1))
        stems.append(stem)
    write_manifest(output_dir, stems, extra={
        "split": split, "image_size": [height, width], "batch_size": 1,
        "inputs": [spec.to_json() for spec in specs],
        "files": {name: f"<stem>_{i}.bin" for i, name in enumerate(INPUT_NAMES)},
    })
    return stems


def run_mindir(mindir: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> dict:
    """Run an exported MINDIR with MindSpore (``ms.load`` + ``nn.GraphCell``) over a preprocessed folder.

    Reads the inputs in ``manifest.txt`` order, writes ``<stem>_<j>.bin`` for output j and finally
    ``manifest.txt`` into ``output_dir``. The caller sets the MindSpore context (device, graph mode).

    Returns:
        ``{"num_images", "first_ms" (includes graph compilation), "mean_ms" (mean over the other images, or the
        first when there is one), "latencies_ms"}``.

    Raises:
        DeployError: missing MINDIR or manifest, input files of the wrong size.
    """
    import mindspore as ms
    from mindspore import nn

    mindir = Path(mindir)
    if not mindir.is_file():
        raise DeployError(f"MINDIR '{mindir}' does not exist; write it with export.py")
    stems = read_manifest(input_dir)
    specs = specs_from_json(read_manifest_json(input_dir)["inputs"])
    graph = nn.GraphCell(ms.load(str(mindir)))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    latencies = []
    for stem in stems:
        inputs = [ms.Tensor(read_tensor(tensor_path(input_dir, stem, i), spec)) for i, spec in enumerate(specs)]
        start = time.perf_counter()
        outputs = [out.asnumpy() for out in graph(*inputs)]
        latencies.append((time.perf_counter() - start) * 1e3)
        for index, array in enumerate(outputs):
            write_tensor(tensor_path(output_dir, stem, index), array)
    write_manifest(output_dir, stems)
    steady = latencies[1:] or latencies
    return {"num_images": len(stems), "first_ms": latencies[0], "mean_ms": float(np.mean(steady)),
            "latencies_ms": latencies}


def _result_specs(result_dir: Path, stem: str) -> list[TensorSpec]:
    """Output specs for one image; Q is read off the scores file, so any query count is accepted."""
    scores = tensor_path(result_dir, stem, 0)
    if not scores.is_file():
        raise DeployError(f"output file '{scores}' (scores) does not exist; did the inference runner finish?")
    size = scores.stat().st_size
    if size == 0 or size % 4:
        raise DeployError(f"'{scores}' holds {size} bytes, not a float32 [1, Q] scores tensor")
    return output_specs(size // 4)


def postprocess_results(result_dir: str | os.PathLike, ann_file: str | os.PathLike, output_dir: str | os.PathLike,
                        num_classes: int = 91) -> dict[str, float]:
    """Score a result folder with pycocotools; write ``bbox_results.json`` and ``metrics.json``.

    Boxes are already xyxy in original-image pixels (the exported graph's post-process scales by
    ``orig_size``), so no coordinate mapping is left to do here; :class:`CocoEvaluator` converts them to COCO
    ``[x, y, w, h]``, drops label ``>= num_classes`` (no-object) and scores only the images in the manifest.
    The default ``num_classes`` (91) is the rule :func:`src.evaluation.evaluate.evaluate_model` applies to every model:
    it drops DETR's no-object label and keeps every COCO category id (Focus-DETR predicts 80 sigmoid classes but
    labels its detections with the raw ids up to 90, so its class count must not be passed here).

    Returns:
        dict of the 12 COCOeval stats (``STAT_NAMES``); the 12-line table is printed by pycocotools.

    Raises:
        DeployError: missing manifest or output files, files of the wrong size.
        FileNotFoundError: missing annotation file. KeyError: an image id not in the annotation file.
    """
    result_dir = Path(result_dir)
    stems = read_manifest(result_dir)
    evaluator = CocoEvaluator(ann_file, num_classes=num_classes)
    for stem in stems:
        specs = _result_specs(result_dir, stem)
        scores, labels, boxes = (read_tensor(tensor_path(result_dir, stem, i), spec) for i, spec in enumerate(specs))
        evaluator.update(np.array([stem_image_id(stem)]), scores, labels, boxes)
    stats = evaluator.evaluate()
    output_dir = Path(output_dir)
    evaluator.write_results(output_dir / "bbox_results.json")
    evaluator.write_metrics(output_dir / "metrics.json", extra={"result_dir": str(result_dir),
                                                                "outputs": list(OUTPUT_NAMES)})
    return stats
