"""The MindDataset pipeline on real coco_tiny data: documented batch shapes/dtypes, sharding, seeding."""

import json

import numpy as np
import pytest

from src.config import family_defaults
from src.data.catalog import build_catalog
from src.data.dataset import BATCH_COLUMNS, create_dataset
from src.data.mindrecord import read_stamp

MAX_BOXES = 64  # coco_tiny val has an image with 45 boxes
DATA_CFG = {**family_defaults("detr")["data"],
            "max_boxes": MAX_BOXES, "train_scales": [64, 80, 96], "train_max_size": 160, "crop_scales": [80, 100],
            "crop_min_size": 48, "crop_max_size": 72, "eval_size": 64, "eval_max_size": 128,
            "train_pad_buckets": [[96, 160], [160, 96], [160, 160]],
            "eval_pad_buckets": [[64, 128], [128, 64], [128, 128]], "num_workers": 2,
            # whole COCO splits with every image (sets coco_train2017_all, coco_val2017_all)
            "train_split": "train2017", "val_split": "val2017", "filter_empty": False}
DTYPES = {"image": np.float32, "mask": np.bool_, "tgt_boxes": np.float32, "tgt_labels": np.int32,
          "tgt_valid": np.bool_, "image_id": np.int64, "orig_size": np.int32, "img_size": np.int32}


@pytest.fixture(scope="module")
def coco(shared_data):
    return shared_data / "coco_tiny"


@pytest.fixture(scope="module")
def mr_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mindrecord")


def _batches(dataset):
    return list(dataset.create_dict_iterator(output_numpy=True, num_epochs=1))


def _json(coco, split):
    with open(coco / "annotations" / f"instances_{split}.json") as f:
        return json.load(f)


def _check_batch(batch, batch_size):
    assert list(batch) == BATCH_COLUMNS
    for name, dtype in DTYPES.items():
        assert batch[name].dtype == dtype, name
    b, c, h, w = batch["image"].shape
    assert (b, c) == (batch_size, 3)
    assert batch["mask"].shape == (b, h, w)
    assert batch["tgt_boxes"].shape == (b, MAX_BOXES, 4)
    assert batch["tgt_labels"].shape == batch["tgt_valid"].shape == (b, MAX_BOXES)
    assert batch["image_id"].shape == (b,) and batch["orig_size"].shape == batch["img_size"].shape == (b, 2)
    for i in range(b):
        ih, iw = batch["img_size"][i]
        assert not batch["mask"][i, :ih, :iw].any() and batch["mask"][i].sum() == h * w - ih * iw
        assert np.abs(batch["image"][i, :, ih:]).max(initial=0) == 0
        n = int(batch["tgt_valid"][i].sum())
        assert batch["tgt_valid"][i, :n].all()  # valid rows first
        boxes = batch["tgt_boxes"][i]
        assert (boxes[:n] > 0).all() and (boxes[:n] <= 1).all()
        assert not boxes[n:].any() and not batch["tgt_labels"][i, n:].any()
        assert (batch["tgt_labels"][i, :n] >= 1).all() and (batch["tgt_labels"][i, :n] <= 90).all()


def test_eval_pipeline_covers_every_image_with_original_sizes(coco, mr_dir):
    data = _json(coco, "val2017")
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    non_crowd = {i: 0 for i in sizes}
    for ann in data["annotations"]:
        non_crowd[ann["image_id"]] += 1 - ann["iscrowd"]
    batches = _batches(create_dataset(coco, DATA_CFG, "val", mr_dir, 3))
    assert len(batches) == 27  # 80 images in batches of 3: the last one is filled with 1 dummy row
    seen = []
    for batch in batches:
        _check_batch(batch, 3)
        for i, image_id in enumerate(batch["image_id"].tolist()):
            if image_id == -1:
                continue
            seen.append(image_id)
            assert tuple(batch["orig_size"][i]) == sizes[image_id]
            h, w = sizes[image_id]
            assert min(batch["img_size"][i]) == 64 or max(batch["img_size"][i]) <= 128
            assert abs(batch["img_size"][i][0] / batch["img_size"][i][1] - h / w) < 0.05
            assert int(batch["tgt_valid"][i].sum()) == non_crowd[image_id]
    assert sorted(seen) == sorted(sizes)
    assert batches[-1]["image_id"].tolist()[-1] == -1


def test_train_pipeline_batches(coco, mr_dir):
    batches = _batches(create_dataset(coco, DATA_CFG, "train", mr_dir, 4, max_images=16))
    assert len(batches) == 4
    for batch in batches:
        _check_batch(batch, 4)
        assert (batch["image_id"] > 0).all()
        assert tuple(batch["image"].shape[2:]) in {(96, 160), (160, 96), (160, 160)}


def test_train_drops_remainder(coco, mr_dir):
    batches = _batches(create_dataset(coco, DATA_CFG, "train", mr_dir, 4, max_images=10))
    assert len(batches) == 2


def test_same_seed_same_batches_other_seed_differs(coco, mr_dir):
    def run(seed):
        return _batches(create_dataset(coco, DATA_CFG, "train", mr_dir, 2, seed=seed, max_images=6))
    first, again, other = run(3), run(3), run(4)
    for a, b in zip(first, again):
        for name in BATCH_COLUMNS:
            np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a["image"], b["image"]) or a["image"].shape != b["image"].shape
               for a, b in zip(first, other))


@pytest.mark.parametrize("max_images", [None, 12])
def test_rank_sharding_is_disjoint_and_complete(coco, mr_dir, max_images):
    per_rank = []
    for rank in range(2):
        dataset = create_dataset(coco, DATA_CFG, "val", mr_dir, 2, is_training=True, rank_id=rank, rank_size=2,
                                 max_images=max_images)
        per_rank.append([i for b in _batches(dataset) for i in b["image_id"].tolist()])
    expected = 80 if max_images is None else max_images
    assert len(per_rank[0]) == len(per_rank[1]) == expected // 2
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == expected


def test_categories(coco, mr_dir):
    expected = {c["id"]: c["name"] for c in _json(coco, "val2017")["categories"]}
    assert build_catalog(DATA_CFG, coco, "val").id_to_name() == expected
    create_dataset(coco, DATA_CFG, "val", mr_dir, 1)
    assert {int(k): v for k, v in read_stamp(mr_dir, "coco_val2017_all")["categories"].items()} == expected
    assert expected[1] == "person" and expected[90] == "toothbrush"


def test_sample_set_builds_and_runs(tmp_path):
    from src.data.coco import load_coco_split
    from tools.build_sample_set import build_sample_set

    build_sample_set(tmp_path / "sample_coco")
    records, categories, summary = load_coco_split(tmp_path / "sample_coco", "sample")
    assert len(records) == 6 and summary.num_boxes == 8 and summary.images_without_boxes == 1
    assert summary.skipped_degenerate == summary.skipped_outside == summary.partly_outside == 0
    assert {categories[int(c)] for r in records for c in r.category_ids} == {
        "person", "bicycle", "motorcycle", "bench", "cat", "cup", "spoon"}
    cfg = dict(DATA_CFG, eval_pad_buckets=[[128, 128]], val_split="sample")
    batches = _batches(create_dataset(tmp_path / "sample_coco", cfg, "val", tmp_path / "mr", 2))
    assert sorted(i for b in batches for i in b["image_id"].tolist()) == [1, 2, 3, 4, 5, 6]
    for batch in batches:
        _check_batch(batch, 2)


def test_distributed_eval_sees_every_image_once(coco, mr_dir):
    seen = []
    for rank in range(3):  # 80 images do not divide by 3
        dataset = create_dataset(coco, DATA_CFG, "val", mr_dir, 4, rank_id=rank, rank_size=3)
        batches = _batches(dataset)
        assert len(batches) == 7  # ceil(27 / 4) on every rank, so all ranks run the same number of steps
        for batch in batches:
            _check_batch(batch, 4)
        seen += [i for b in batches for i in b["image_id"].tolist() if i != -1]
    assert sorted(seen) == sorted(img["id"] for img in _json(coco, "val2017")["images"])
