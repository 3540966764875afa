"""Train, fine-tune, evaluate and infer on a dataset of one's own (COCO or VOC format), for all three detectors.

The own COCO-format dataset is built in ``tmp_path`` from real images of ``../shared/data/coco_tiny`` (symlinked,
never copied) with their real boxes, relabelled into three classes whose ids 1..3 collide with COCO's but mean
"cat", "dog" and "sofa" (COCO: person, bicycle, car). ``train.py`` / ``eval.py`` / ``infer.py`` run in-process
through their ``main`` with ``--pynative``: compiling three models' training and inference graphs would take
several minutes on the 2-core CI machine, far above this file's time budget, while the data road, the class catalog
and the checkpoints under test are the same in both modes.
"""

import json
import logging
import os
import re
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

import eval as eval_entry
import infer as infer_entry
import train as train_entry
from src.checkpoint import checkpoint_arrays, load_pretrained, save_checkpoint
from src.config import load_config
from src.data.catalog import Catalog, CatalogError
from src.data.coco import CocoFormatError
from src.data.coco_classes import COCO_CATEGORY_NAMES
from src.data.mindrecord import convert_source
from src.data.sources import build_source
from src.data.voc import VocFormatError
from src.models import build_model

REPO = Path(__file__).resolve().parents[1]
OWN_NAMES = {1: "cat", 2: "dog", 3: "sofa"}
NUM_IMAGES = 4
CONFIGS = {"detr": "configs/detr/detr_tiny.yaml", "focus_detr": "configs/focus_detr/focus_detr_tiny.yaml",
           "defrcn": "configs/defrcn/defrcn_tiny_base_coco.yaml"}
OWN_SETS = ["data.train_split=train", "data.val_split=val"]
DEFRCN_SETS = ["data.classes=all", "train.batch_size=1", "train.ims_per_batch=1", "eval.batch_size=1",
               "model.score_thresh=0.0"]
TINY_DETR_R50 = ["model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=2",
                 "model.dim_feedforward=64", "model.num_queries=20", "model.train_backbone=false",
                 "data.fixed_size=[128,128]", "data.mosaic_tile_size=64", "data.train_pad_buckets=[[128,128]]",
                 "data.eval_pad_buckets=[[128,128]]", "data.max_boxes=20", "data.num_workers=1",
                 "train.batch_size=2", "train.lr=1e-3", "train.log_interval=1"]


def _own_coco(root: Path, shared_data: Path, truncate: bool = False) -> Path:
    """``root/annotations/instances_{train,val}.json`` + ``root/{train,val}/``: NUM_IMAGES real coco_tiny images,
    their non-crowd boxes with category ``1 + (COCO id % 3)``; ``truncate``: the first image is a JPEG cut to 1/3."""
    source = json.loads((shared_data / "coco_tiny/annotations/instances_train2017.json").read_text())
    by_image = {}
    for ann in source["annotations"]:
        if not ann["iscrowd"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
    images = [im for im in sorted(source["images"], key=lambda im: im["id"]) if im["id"] in by_image][:NUM_IMAGES]
    anns = [dict(a, category_id=1 + a["category_id"] % 3, segmentation=[]) for im in images for a in by_image[im["id"]]]
    data = {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for i, n in OWN_NAMES.items()]}
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        (root / split).mkdir()
        for k, im in enumerate(images):
            original = shared_data / "coco_tiny/train2017" / im["file_name"]
            if truncate and k == 0:
                encoded = original.read_bytes()
                (root / split / im["file_name"]).write_bytes(encoded[:len(encoded) // 3])
            else:
                os.symlink(original, root / split / im["file_name"])
    return root


@pytest.fixture(scope="module")
def own_coco(tmp_path_factory, shared_data):
    return _own_coco(tmp_path_factory.mktemp("own") / "coco", shared_data)


@pytest.fixture(scope="module")
def coco_detr_checkpoint(tmp_path_factory):
    """A tiny DETR checkpoint for the 80 COCO classes (91-way head), as a converted COCO model is."""
    path = tmp_path_factory.mktemp("coco_ckpt") / "detr_coco.ckpt"
    # A fixed seed: the random weights must not depend on which tests ran before in this process (with some
    # orders every query's top class was the unused id 0, so no detection carried an own class name).
    ms.set_seed(0)
    save_checkpoint(path, build_model(load_config(REPO / CONFIGS["detr"])).network)
    return path


def _train(config, root, out, sets, *extra):
    train_entry.main(["--config", str(REPO / config), "--coco_path", str(root), "--output_dir", str(out),
                      "--max_steps", "2", "--pynative", *extra, "--set", *sets])
    return sorted((out / "checkpoints").glob("*.ckpt"))[-1]


@pytest.fixture(scope="module")
def trained(own_coco, tmp_path_factory, coco_detr_checkpoint):
    """``trained(name)``: checkpoint of ``name`` trained 2 steps on the own dataset, trained on first use (DETR
    starts from the COCO checkpoint through ``--pretrained``)."""
    out, done = tmp_path_factory.mktemp("runs"), {}

    def get(name):
        if name not in done:
            sets = OWN_SETS + (DEFRCN_SETS if name == "defrcn" else [])
            extra = ["--pretrained", str(coco_detr_checkpoint)] if name == "detr" else []
            done[name] = _train(CONFIGS[name], own_coco, out / name, sets, *extra)
        return done[name]
    return get


@pytest.mark.parametrize("name", list(CONFIGS))
def test_own_coco_dataset_trains_evaluates_and_names_detections(name, trained, own_coco, tmp_path, capsys):
    sets = OWN_SETS + (DEFRCN_SETS if name == "defrcn" else [])
    capsys.readouterr()
    eval_entry.main(["--config", str(REPO / CONFIGS[name]), "--coco_path", str(own_coco), "--checkpoint",
                     str(trained(name)), "--output_dir", str(tmp_path / "eval"), "--pynative", "--max_images", "2",
                     "--set", *sets])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(" Average ")]
    assert len(table) == 12
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["categories"] == [{"id": i, "name": n} for i, n in OWN_NAMES.items()]
    assert not any(key.startswith(("bAP", "nAP")) for key in metrics["bbox"])  # ids 1..3 are not COCO's base/novel

    image = sorted((own_coco / "val").iterdir())[0]
    infer_entry.main(["--config", str(REPO / CONFIGS[name]), "--checkpoint", str(trained(name)), "--images",
                      str(image), "--output_dir", str(tmp_path / "infer"), "--score_threshold", "0", "--pynative",
                      "--set", *sets])
    detections = json.loads((tmp_path / "infer" / f"{image.stem}.json").read_text())
    named = [d for d in detections if d["category_id"] in OWN_NAMES]
    assert named, detections[:3]
    assert all(d["category_name"] == OWN_NAMES[d["category_id"]] for d in named)
    # DETR's head is id-indexed (labels 0..3): id 0 is no class; DeFRCN and Focus-DETR mark empty slots with -1.
    assert all(d["category_id"] <= 0 and d["category_name"] == f"class_{d['category_id']}"
               for d in detections if d["category_id"] not in OWN_NAMES)


@pytest.mark.parametrize("name", ["detr", "focus_detr"])
def test_fine_tune_reinitializes_exactly_the_class_heads(name, tmp_path, caplog):
    cfg = load_config(REPO / CONFIGS[name])
    coco_ckpt = tmp_path / "coco.ckpt"
    save_checkpoint(coco_ckpt, build_model(cfg).network)
    saved = checkpoint_arrays(coco_ckpt)
    own = build_model(cfg, catalog=Catalog((1, 2, 3), ("cat", "dog", "sofa"))).network
    with caplog.at_level(logging.WARNING, logger="src.checkpoint"):
        missing, unexpected = load_pretrained(coco_ckpt, own, strict=True, reinit_class_heads=True)
    params = {p.name: p.asnumpy() for p in own.get_parameters()}
    reinit = sorted(k for k, v in params.items() if saved[k].shape != v.shape)
    assert reinit and missing == reinit and not unexpected
    expected_heads = {"detr": {"class_embed.weight", "class_embed.bias"}}.get(name)
    if expected_heads is not None:
        assert set(reinit) == expected_heads
    else:
        assert any("label_enc" in k for k in reinit) and any("class_embed" in k for k in reinit)
    for key, value in params.items():
        if key not in reinit:
            np.testing.assert_array_equal(value, saved[key], err_msg=key)
    warnings = [r.getMessage() for r in caplog.records if "keep their initialization" in r.getMessage()]
    assert len(warnings) == 1
    assert sorted(re.findall(r"([\w.]+) checkpoint \(", warnings[0])) == reinit

    other = build_model({**cfg, "model": {**cfg["model"], "num_queries": 10}}).network
    with pytest.raises(ValueError, match=r"for 1 key.*'[\w.]+': checkpoint \(20, \d+\) vs model \(10, "):
        load_pretrained(coco_ckpt, other, strict=True, reinit_class_heads=True)


VOC_RUNS = {"detr": ("configs/detr/detr_r50_1024_voc.yaml", TINY_DETR_R50),
            "focus_detr": (CONFIGS["focus_detr"], ["data.dataset=voc", "data.train_split=2007_trainval+2012_trainval",
                                                   "data.val_split=2007_test"])}


@pytest.mark.parametrize("name", list(VOC_RUNS))
def test_voc_trains_and_evaluates_voc07_ap50(name, shared_data, tmp_path):
    config, sets = VOC_RUNS[name]
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    checkpoint = _train(config, devkit, tmp_path / "run", sets, "--max_images", "2")
    eval_entry.main(["--config", str(REPO / config), "--coco_path", str(devkit), "--checkpoint", str(checkpoint),
                     "--output_dir", str(tmp_path / "eval"), "--pynative", "--max_images", "2", "--set", *sets])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"] == "voc" and metrics["split"] == "2007_test" and metrics["num_images"] == 2
    assert 0.0 <= metrics["bbox"]["AP50"] <= 1.0
    assert len(metrics["categories"]) == 20 and metrics["categories"][0] == {"id": 1, "name": "aeroplane"}


def test_truncated_jpeg_is_named_in_train_eval_and_infer(tmp_path, shared_data, trained):
    root = _own_coco(tmp_path / "broken", shared_data, truncate=True)
    bad = sorted((root / "val").iterdir())[0]
    assert not bad.is_symlink()
    with pytest.raises(Exception, match=re.escape(bad.name) + ".*truncated"):
        _train(CONFIGS["detr"], root, tmp_path / "run", OWN_SETS + ["train.batch_size=1"])
    with pytest.raises(Exception, match=re.escape(bad.name) + ".*truncated"):
        eval_entry.main(["--config", str(REPO / CONFIGS["detr"]), "--coco_path", str(root), "--checkpoint",
                         str(trained("detr")), "--output_dir", str(tmp_path / "eval"), "--pynative",
                         "--set", *OWN_SETS])
    with pytest.raises(ValueError, match=re.escape(bad.name) + ".*truncated"):
        infer_entry.main(["--config", str(REPO / CONFIGS["detr"]), "--checkpoint", str(trained("detr")),
                          "--images", str(bad), "--output_dir", str(tmp_path / "infer"), "--pynative"])
    assert not (tmp_path / "infer").exists()


def _write_categories(root: Path, categories, category_id=1):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
            "annotations": [{"id": 7, "image_id": 1, "bbox": [1, 1, 5, 5], "category_id": category_id}],
            "categories": categories}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "instances_train.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_class_lists_are_named_and_nothing_is_written(tmp_path, shared_data):
    cfg = {"dataset": "coco", "protocol": "standard", "class_names": None, "train_split": "train",
           "filter_empty": False}
    mr = tmp_path / "mr"
    path = _write_categories(tmp_path / "unknown", [{"id": 1, "name": "cat"}], category_id=5)
    with pytest.raises(CocoFormatError, match=re.escape(str(path)) + ".*unknown category id 5"):
        convert_source(build_source(tmp_path / "unknown", cfg, "train"), mr)
    path = _write_categories(tmp_path / "dup", [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}])
    with pytest.raises(CatalogError, match=re.escape(str(path)) + ".*duplicate class name 'cat'"):
        convert_source(build_source(tmp_path / "dup", cfg, "train"), mr)
    path = _write_categories(tmp_path / "empty", [])
    with pytest.raises(CatalogError, match=re.escape(str(path)) + ".*class list is empty"):
        convert_source(build_source(tmp_path / "empty", cfg, "train"), mr)
    with pytest.raises(CatalogError, match="data.class_names.*empty"):
        build_source(shared_data / "voc_mini/VOCdevkit", dict(cfg, dataset="voc", class_names=[]), "train")
    voc = dict(cfg, dataset="voc", class_names=["cat", "dog"], train_split="2007_trainval")
    with pytest.raises(VocFormatError, match=r"Annotations/\w+\.xml: object name '\w+' is not in the class list"):
        convert_source(build_source(shared_data / "voc_mini/VOCdevkit", voc, "train"), mr)
    assert not mr.exists() or not any(mr.iterdir())
    assert set(COCO_CATEGORY_NAMES[i] for i in OWN_NAMES) == {"person", "bicycle", "car"}  # the ids do collide


def test_coco_configs_keep_their_class_counts(shared_data):
    """COCO gives exactly the previous head sizes: DETR 91 (max id + 1), Focus-DETR 80, DeFRCN base 60."""
    from src.data.catalog import build_catalog, resolve_num_classes

    coco = shared_data / "coco_tiny"
    expected = {"detr": 91, "focus_detr": 80, "defrcn": 60}
    for name, config in CONFIGS.items():
        cfg = load_config(REPO / config, ["data.val_split=val2017"])
        catalog = build_catalog(cfg["data"], coco, "val")
        assert catalog.num_classes(name) == expected[name]
        if name != "defrcn":
            assert resolve_num_classes(cfg, catalog)["model"]["num_classes"] == expected[name]
            assert resolve_num_classes(cfg)["model"]["num_classes"] == expected[name]
    voc = build_catalog(load_config(REPO / "configs/detr/detr_r50_1024_voc.yaml")["data"])
    assert voc.num_classes("detr") == 21 and voc.names[0] == "aeroplane" and voc.ids[-1] == 20
