"""DeFRCN data sources (src/data/sources.py) into MindRecord and the batch pipeline, on real coco_tiny / voc_mini."""

import collections
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from src.config import family_defaults
from src.data.dataset import create_dataset
from src.data.few_shot import FewShotSplitError, load_coco_few_shot, load_voc_few_shot
from src.data.few_shot_sampling import write_coco_few_shot, write_voc_few_shot
from src.data.mindrecord import ensure_source_mindrecord, read_stamp
from src.data.sources import (
    CocoFewShotSource,
    build_source,
    coco_split_paths,
    detector_class_ids,
    detector_class_names,
    load_source,
    voc_eval_records,
)
from src.data.transforms import build_eval_transform, build_train_transform, get_size_shortest_edge
from src.data.voc import VOC_CLASSES, voc_file_id

# Typed from TFA / DeFRCN builtin_meta.py (the 20 novel COCO ids are the PASCAL VOC classes).
COCO_NOVEL = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
VOC_ALL_SPLIT1 = ["aeroplane", "bicycle", "boat", "bottle", "car", "cat", "chair", "diningtable", "dog", "horse",
                  "person", "pottedplant", "sheep", "train", "tvmonitor", "bird", "bus", "cow", "motorbike", "sofa"]

TINY = {**family_defaults("defrcn")["data"],
        "max_boxes": 100, "normalize": "caffe_bgr", "train_scales": [96, 128], "train_max_size": 160,
        "eval_size": 128, "eval_max_size": 160, "train_pad_buckets": [[160, 160]],
        "eval_pad_buckets": [[160, 160]], "num_workers": 1, "random_crop": False, "resize_rounding": "detectron2",
        "few_shot_root": "", "shot": 1, "seed": 0, "filter_empty": True, "voc_split": 1}
COCO_CFG = dict(TINY, dataset="coco", classes="base", train_split="train2017", val_split="val2017")
VOC_CFG = dict(TINY, dataset="voc", classes="all", train_split="2007_trainval+2012_trainval", val_split="2007_test")


def _batches(dataset):
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def _valid_labels(batches):
    """image id -> sorted labels of its valid target rows, over all batches (padding rows skipped)."""
    out = {}
    for b in batches:
        for i, image_id in enumerate(b["image_id"]):
            if image_id >= 0:
                out[int(image_id)] = sorted(b["tgt_labels"][i][b["tgt_valid"][i]].tolist())
    return out


# ------------------------------------------------------------------------------------------------ class ids
def test_detector_class_ids_against_published_lists():
    assert detector_class_ids({"dataset": "coco", "classes": "novel"}) == tuple(COCO_NOVEL)
    base = detector_class_ids({"dataset": "coco", "classes": "base"})
    assert len(base) == 60 and list(base) == sorted(base) and not set(base) & set(COCO_NOVEL)
    coco_all = detector_class_ids({"dataset": "coco", "classes": "all"})
    assert list(coco_all) == sorted(base + tuple(COCO_NOVEL))
    assert detector_class_names({"dataset": "coco", "classes": "novel"})[:3] == ("person", "bicycle", "car")
    voc = {"dataset": "voc", "voc_split": 1}
    assert detector_class_ids(dict(voc, classes="novel")) == (3, 6, 10, 14, 18)
    assert detector_class_names(dict(voc, classes="all")) == tuple(VOC_ALL_SPLIT1)
    assert detector_class_ids(dict(voc, classes="all"))[:5] == (1, 2, 4, 5, 7)  # aeroplane bicycle boat bottle car
    assert detector_class_ids(dict(voc, classes="base")) == detector_class_ids(dict(voc, classes="all"))[:15]
    assert detector_class_ids(dict(voc, classes="novel", voc_split=2)) == (1, 5, 10, 13, 18)
    assert detector_class_ids(dict(voc, classes="novel", voc_split=3)) == (4, 8, 14, 17, 18)
    for bad in ({"dataset": "kitti"}, {"dataset": "coco", "classes": "rare"},
                {"dataset": "voc", "classes": "all", "voc_split": 4}):
        with pytest.raises(ValueError, match="data."):
            detector_class_ids(bad)


# ----------------------------------------------------------------------------------------------------- COCO
def test_coco_base_classes_through_mindrecord(tmp_path, shared_data):
    root = shared_data / "coco_tiny"
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    base = set(detector_class_ids(COCO_CFG))
    expected = collections.defaultdict(list)
    for ann in data["annotations"]:
        if ann["category_id"] in base and not ann["iscrowd"]:
            expected[ann["image_id"]].append(ann["category_id"])
    # Every training image once, eval transforms (deterministic): which="train" with is_training=False.
    batches = _batches(create_dataset(root, COCO_CFG, "train", tmp_path / "mr", 4, is_training=False))
    got = _valid_labels(batches)
    assert got == {k: sorted(v) for k, v in expected.items()}  # images without base boxes are dropped
    assert sum(map(len, got.values())) == sum(map(len, expected.values()))
    stamp = read_stamp(tmp_path / "mr", "coco_train2017_base_nonempty")
    assert [int(k) for k in stamp["categories"]] == sorted(base)
    assert stamp["source"]["class_ids"] == sorted(base)
    # A training batch: detectron2-style resize + flip, caffe BGR input, base ids only.
    batch = _batches(create_dataset(root, COCO_CFG, "train", tmp_path / "mr", 2, max_images=4))[0]
    assert batch["image"].shape == (2, 3, 160, 160) and set(batch["tgt_labels"][batch["tgt_valid"]]) <= base
    # The validation set keeps every image, also those without base boxes.
    val = build_source(root, COCO_CFG, "val").load(check_files=False)
    assert len(val.records) == 80 and val.name == "coco_val2017_base"


def test_tfa_2014_layout(tmp_path, shared_data):
    # TFA's names: cocosplit/datasplit/{trainvalno5k,5k}.json with images in trainval2014/ (5k: val2014/).
    root = tmp_path / "coco"
    (root / "cocosplit" / "datasplit").mkdir(parents=True)
    (root / "cocosplit" / "datasplit" / "trainvalno5k.json").symlink_to(
        shared_data / "coco_tiny" / "annotations" / "instances_train2017.json")
    (root / "trainval2014").symlink_to(shared_data / "coco_tiny" / "train2017")
    assert coco_split_paths(root, "trainvalno5k") == (root / "cocosplit" / "datasplit" / "trainvalno5k.json",
                                                      root / "trainval2014")
    assert coco_split_paths(root, "5k")[1] == root / "trainval2014"  # no val2014/: the merged folder
    (root / "val2014").mkdir()
    assert coco_split_paths(root, "5k")[1] == root / "val2014"
    source = load_source(root, dict(COCO_CFG, train_split="trainvalno5k", classes="novel"), "train")
    assert source.name == "coco_trainvalno5k_novel_nonempty"
    assert {int(c) for r in source.records for c in r.category_ids} <= set(COCO_NOVEL)


def _four_class_split(tmp_path, shared_data):
    folder = shared_data / "few_shot_coco_split"
    (tmp_path / "seed0").mkdir()
    for c in ("bus", "car", "cat", "dog", "person"):
        (tmp_path / "seed0" / f"full_box_10shot_{c}_trainval.json").symlink_to(folder / f"{c}.json")
    return tmp_path


def test_shipped_coco_split_through_the_source(tmp_path, shared_data):
    split_root = _four_class_split(tmp_path, shared_data)
    source = CocoFewShotSource("four", split_root, tmp_path / "images", (6, 3, 17, 18), 10, 0, True)
    data = source.load(check_files=False)  # the shipped files name color.jpg, not the real images
    # mmfewshot's upstream test: bus, car, cat, dog give 26 image records and 40 boxes.
    assert len(data.records) == 26 and sum(len(r.boxes) for r in data.records) == 40
    assert data.categories == {6: "bus", 3: "car", 17: "cat", 18: "dog"}
    first = json.loads((shared_data / "few_shot_coco_split" / "bus.json").read_text())["annotations"][0]
    record = next(r for r in data.records if r.image_id == first["image_id"])
    np.testing.assert_array_equal(record.boxes[0], np.float32(first["bbox"]))  # xywh exactly as in the file
    with pytest.raises(FewShotSplitError, match="full_box_10shot_bus_trainval.json"):
        CocoFewShotSource("four", split_root, tmp_path, (6,), 10, 1, True).identity()  # no seed1/


def test_prepared_coco_k_shot_split_through_the_pipeline(tmp_path, shared_data):
    root = shared_data / "coco_tiny"
    write_coco_few_shot(root / "annotations" / "instances_train2017.json", tmp_path / "cocosplit", [0, 1],
                        shots=(1, 2, 3))
    cfg = dict(COCO_CFG, classes="novel", few_shot_root=str(tmp_path / "cocosplit"), shot=3, seed=1)
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    counts = collections.defaultdict(collections.Counter)
    for ann in data["annotations"]:
        if not ann["iscrowd"]:
            counts[ann["category_id"]][ann["image_id"]] += 1
    batches = _batches(create_dataset(root, cfg, "train", tmp_path / "mr", 2, is_training=False))
    per_class = collections.Counter(label for labels in _valid_labels(batches).values() for label in labels)
    assert set(per_class) <= set(COCO_NOVEL)
    for cat_id in COCO_NOVEL:
        assert per_class[cat_id] <= 3
        # TFA semantics: exactly K where some image has one instance and K is made of whole images; person has
        # many single-instance images in coco_tiny, so it must get exactly 3.
        singles = sum(n == 1 for n in counts[cat_id].values())
        if singles >= 3:
            assert per_class[cat_id] == 3, cat_id
    assert per_class[1] == 3
    # A changed split file makes the stamp stale and the set is rebuilt from the new file.
    source = build_source(root, cfg, "train")
    before = read_stamp(tmp_path / "mr", source.name)
    assert before["source"] == json.loads(json.dumps(source.identity()))
    person = tmp_path / "cocosplit" / "seed1" / "full_box_3shot_person_trainval.json"
    split = json.loads(person.read_text())
    person.write_text(json.dumps(dict(split, annotations=split["annotations"][:1],
                                      images=[i for i in split["images"]
                                              if i["id"] == split["annotations"][0]["image_id"]])))
    changed = build_source(root, cfg, "train")
    ensure_source_mindrecord(changed, tmp_path / "mr")
    stamp = read_stamp(tmp_path / "mr", source.name)
    assert stamp["source"] != before["source"] and stamp["source"] == json.loads(json.dumps(changed.identity()))
    assert stamp["num_images"] == len(load_coco_few_shot(tmp_path / "cocosplit", detector_class_names(cfg), 3, 1))


# ------------------------------------------------------------------------------------------------------ VOC
def voc_object_names(devkit, file_id):
    """Class names of the top-level objects of VOC image ``file_id``, read with a regex over its XML (independent
    of src.data.voc's parser)."""
    year = 2012 if "_" in file_id else 2007
    text = (devkit / f"VOC{year}" / "Annotations" / f"{file_id}.xml").read_text()
    blocks = [re.sub(r"<part>.*?</part>", "", b, flags=re.S) for b in re.findall(r"<object>(.*?)</object>", text,
                                                                               flags=re.S)]
    return [re.search(r"<name>(.*?)</name>", b).group(1).strip() for b in blocks]


def test_voc_trainval_union_through_mindrecord(tmp_path, shared_data):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    listed = [i for y in (2007, 2012) for i in (devkit / f"VOC{y}" / "ImageSets" / "Main" / "trainval.txt")
              .read_text().split()]
    for classes, keep in (("all", set(VOC_CLASSES)), ("base", set(VOC_ALL_SPLIT1[:15]))):
        cfg = dict(VOC_CFG, classes=classes)
        batches = _batches(create_dataset(devkit, cfg, "train", tmp_path / "mr", 3, is_training=False))
        got = {voc_file_id(k): v for k, v in _valid_labels(batches).items()}
        expected = {}
        for file_id in listed:
            ids = sorted(1 + VOC_CLASSES.index(n) for n in voc_object_names(devkit, file_id) if n in keep)
            if ids:
                expected[file_id] = ids
        assert got == expected, classes  # difficult objects included, as detectron2 trains on them
    assert sum(map(len, got.values())) == 27  # the README's 17 + 11 objects minus the one sofa (novel in split 1)
    assert (tmp_path / "mr" / "voc_2007_trainval-2012_trainval_base1_nonempty.stamp.json").is_file()
    # Evaluation ground truth: the test list, detector labels, difficult flags kept.
    records = voc_eval_records(devkit, dict(VOC_CFG, classes="all"))
    assert [r.file_id for r in records] == (devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert sum(int(r.difficult.sum()) for r in records) == 2
    assert {VOC_ALL_SPLIT1[k] for r in records for k in r.labels} == {
        n for r in records for n in voc_object_names(devkit, r.file_id)}


def test_voc_few_shot_instance_records(tmp_path, shared_data):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    write_voc_few_shot(devkit, tmp_path / "vocsplit", [0], shots=(1, 2, 3), seed0_at_root=False)
    cfg = dict(VOC_CFG, classes="all", few_shot_root=str(tmp_path / "vocsplit"), shot=3, seed=0)
    data = load_source(devkit, cfg, "train")
    assert data.name == "voc_fewshot_all1_3shot_seed0_nonempty"
    per_class = collections.Counter(int(r.category_ids[0]) for r in data.records)
    assert all(len(r.boxes) == 1 for r in data.records) and max(per_class.values()) <= 3
    # 000004 holds 7 cars and is the only car image: several records of one image (TFA keeps them).
    cars = [r for r in data.records if r.category_ids[0] == 1 + VOC_CLASSES.index("car")]
    assert len(cars) == 3 and len({r.image_id for r in cars}) == 1
    assert len({tuple(r.boxes[0]) for r in cars}) == 3
    batches = _batches(create_dataset(devkit, cfg, "train", tmp_path / "mr", 2, is_training=False, shuffle=False))
    n_valid = sum(int(b["tgt_valid"].sum()) for b in batches)
    assert n_valid == len(data.records) == sum(int((b["image_id"] >= 0).sum()) for b in batches)
    with pytest.raises(FewShotSplitError, match="box_3shot_airplane_train.txt"):
        load_voc_few_shot(tmp_path / "vocsplit", devkit, ("airplane",), 3, 0)
    with pytest.raises(FewShotSplitError, match=str(tmp_path / "vocsplit" / "seed4")):
        load_source(devkit, dict(cfg, seed=4), "train")


# ----------------------------------------------------------------------------------------------- transforms
def test_detectron2_resize_and_no_crop():
    # Hand-computed with detectron2 v0.3 ResizeShortestEdge (scale the short side, cap the long side, round
    # half up): 480x640 at 800 -> 800 x 1066.67 -> 800x1067; 500x1500 at 800, max 1333 -> 800x2400, capped by
    # 1333/2400 -> 444.3x1333 -> 444x1333 (DETR gives 800x1066 and 444x1332).
    assert get_size_shortest_edge((480, 640), 800, 1333) == (800, 1067)
    assert get_size_shortest_edge((500, 1500), 800, 1333) == (444, 1333)
    assert get_size_shortest_edge((640, 480), 800, 1333) == (1067, 800)
    cfg = dict(TINY, train_scales=[800], train_max_size=1333, eval_size=800, eval_max_size=1333)
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 110, 220]], np.float32)
    for seed in range(6):  # no crop branch: the whole image, always at the drawn scale
        out, out_boxes, _ = build_train_transform(cfg)(image, boxes, np.array([1], np.int32),
                                                       np.random.default_rng(seed))
        assert out.shape == (3, 800, 1067)
        w = out_boxes[0, 2] * 1067
        np.testing.assert_allclose(w, 100 * 1067 / 640, rtol=1e-5)
    flat = np.empty((480, 640, 3), np.uint8)
    flat[:] = (10, 20, 30)  # RGB
    out, _, _ = build_eval_transform(cfg)(flat, boxes, np.array([1], np.int32), None)
    assert out.shape == (3, 800, 1067)
    # caffe_bgr: B, G, R on 0-255 minus detectron2's PIXEL_MEAN (103.53, 116.28, 123.675), std 1.
    np.testing.assert_allclose(out[:, 400, 500], [30 - 103.53, 20 - 116.28, 10 - 123.675], rtol=1e-6)


def test_missing_sources_name_the_file(tmp_path, shared_data):
    with pytest.raises(Exception, match=re.escape(str(tmp_path / "annotations" / "instances_train2017.json"))):
        build_source(tmp_path, COCO_CFG, "train").identity()
    with pytest.raises(FewShotSplitError, match="full_box_1shot_person_trainval.json"):
        load_source(shared_data / "coco_tiny", dict(COCO_CFG, classes="novel", few_shot_root=str(tmp_path)),
                    "train")
    with pytest.raises(Exception, match=re.escape(str(tmp_path / "VOC2007" / "ImageSets" / "Main"))):
        load_source(tmp_path, VOC_CFG, "val")
    with pytest.raises(ValueError, match="which"):
        build_source(tmp_path, COCO_CFG, "test")
    assert Path(coco_split_paths(tmp_path, "val2017")[1]).name == "val2017"


def test_coco_to_mindrecord_tool_converts_a_config_source(tmp_path, shared_data, capsys):
    path = Path(__file__).resolve().parents[1] / "tools" / "coco_to_mindrecord.py"
    spec = importlib.util.spec_from_file_location("coco_to_mindrecord_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = tmp_path / "voc.yaml"
    config.write_text("model: {name: defrcn}\ndata: {dataset: voc, classes: novel, voc_split: 2, "
                      "train_split: 2007_trainval+2012_trainval, val_split: 2007_test}\n")
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    args = ["--coco_path", str(devkit), "--config", str(config), "--output_dir", str(tmp_path / "mr")]
    assert tool.main(args) == 0
    stamp = read_stamp(tmp_path / "mr", "voc_2007_trainval-2012_trainval_novel2_nonempty")
    # Split 2 novel: aeroplane, bottle, cow, horse, sofa; voc_mini has aeroplanes in 2 images and a sofa in 1.
    assert stamp["num_images"] == 3 and stamp["categories"] == {"1": "aeroplane", "5": "bottle", "10": "cow",
                                                                "13": "horse", "18": "sofa"}
    assert tool.main(args + ["--which", "val", "--set", "data.val_split=2012_test"]) == 0
    assert read_stamp(tmp_path / "mr", "voc_2012_test_novel2")["num_images"] == 5
    assert tool.main(args + ["--set", "data.train_split=2007_nosuchlist"]) == 1
    assert str(devkit / "VOC2007" / "ImageSets" / "Main" / "nosuchlist.txt") in capsys.readouterr().err
