"""Distributed training batches: every rank pads step k to the same bucket (src/data/group_sampler.py)."""

import json

import numpy as np
import pytest

from src.config import family_defaults
from src.data.dataset import create_dataset
from src.data.group_sampler import LANDSCAPE, PORTRAIT, group_bucket, orientation_groups, plan_group_batches

# The detr_r50 bucket layout (landscape, portrait, square) scaled down so the test decodes small images; random
# crop and flip on, as in the R50 recipe.
DATA_CFG = {**family_defaults("detr")["data"],
            "max_boxes": 64, "train_scales": [64, 80, 96], "train_max_size": 160, "crop_scales": [80, 100],
            "crop_min_size": 48, "crop_max_size": 72, "eval_size": 64, "eval_max_size": 128,
            "train_pad_buckets": [[96, 160], [160, 96], [160, 160]],
            "eval_pad_buckets": [[64, 128], [128, 64], [128, 128]], "num_workers": 2,
            "train_split": "train2017", "filter_empty": False}  # every image of the split, as the test counts


def test_plan_deals_one_group_per_step_on_every_rank():
    groups = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1])
    plans = [plan_group_batches(groups, 2, rank, 2, seed=3) for rank in range(2)]
    np.testing.assert_array_equal(plans[0].step_groups, plans[1].step_groups)
    steps = len(plans[0].step_groups)
    assert steps == 4  # 6 landscape -> 2 global batches of 4 (2 repeats), 5 portrait -> 2 (3 repeats)
    for plan in plans:
        assert plan.indices.shape == (steps * 2,)
        np.testing.assert_array_equal(groups[plan.indices].reshape(steps, 2), plan.step_groups[:, None].repeat(2, 1))
    seen = np.concatenate([p.indices for p in plans])
    assert set(seen.tolist()) == set(range(len(groups)))
    other_seed = plan_group_batches(groups, 2, 0, 2, seed=4)
    assert not np.array_equal(other_seed.indices, plans[0].indices)


def test_group_bucket_holds_the_largest_output_of_its_orientation():
    buckets = [[800, 1333], [1333, 800], [1333, 1333]]
    assert group_bucket(LANDSCAPE, 800, 1333, buckets) == (800, 1333)
    assert group_bucket(PORTRAIT, 800, 1333, buckets) == (1333, 800)
    with pytest.raises(ValueError, match="data.train_pad_buckets"):
        group_bucket(PORTRAIT, 800, 1333, [[800, 1333]])


def test_two_ranks_pad_every_step_to_the_same_shape_on_coco_tiny(shared_data, tmp_path):
    coco = shared_data / "coco_tiny"
    with open(coco / "annotations" / "instances_train2017.json") as f:
        images = json.load(f)["images"]
    groups = orientation_groups([im["height"] for im in images], [im["width"] for im in images])
    assert 0 < groups.sum() < len(groups), "coco_tiny must mix orientations for this test to mean anything"
    shapes = []
    for rank in range(2):
        dataset = create_dataset(coco, DATA_CFG, "train", tmp_path / "mr", 2, rank_id=rank, rank_size=2, seed=7)
        shapes.append([batch[0].shape for batch in
                       dataset.create_tuple_iterator(columns=["image"], output_numpy=True, num_epochs=1)])
    # Each orientation group is filled up to whole global batches of 2 ranks x 2 images.
    steps = sum(-(-int(n) // 4) for n in np.bincount(groups))
    assert len(shapes[0]) == len(shapes[1]) == steps
    assert shapes[0] == shapes[1]
    assert {s[2:] for s in shapes[0]} == {(96, 160), (160, 96)}
