"""Distributed batch plan grouped by orientation, so every rank pads to the same bucket at each step.

Graph mode compiles one graph per padded input shape. When each rank picks its own pad bucket per batch, the
ranks of a data-parallel run compile different graphs at different times and the all-reduce of the rank that
is ready first times out waiting for the one still compiling. :func:`plan_group_batches` decides the batches
of an epoch on the *global* index order with the same seed on every rank: images are grouped by orientation
(landscape or square: w >= h; portrait: h > w), each group is shuffled and cut into global batches of
``batch_size * rank_size`` images, the global batches are shuffled, and rank ``r`` takes the ``r``-th slice of
``batch_size`` images of each. Step ``k`` therefore holds images of one group on every rank, and
:func:`group_bucket` maps the group to one pad bucket that holds any training output of such an image.

Follows the idea of mmdetection's ``DistributedGroupSampler`` (mmdet/datasets/samplers/group_sampler.py:
group flags by aspect ratio, each group padded to a multiple of the global batch by repeating its own images),
written anew so that a step's batch comes from one global batch on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

LANDSCAPE, PORTRAIT = 0, 1


def orientation_groups(heights: Sequence[int], widths: Sequence[int]) -> np.ndarray:
    """Group flag per image: ``LANDSCAPE`` (0) when w >= h, ``PORTRAIT`` (1) when h > w. int64 [N]."""
    return (np.asarray(heights, np.int64) > np.asarray(widths, np.int64)).astype(np.int64)


@dataclass
class GroupPlan:
    """One rank's share of an epoch.

    Attributes:
        indices: int64 [steps * batch_size] record indices of this rank, batch after batch.
        step_groups: int64 [steps] group flag of each step (equal on every rank).
    """

    indices: np.ndarray
    step_groups: np.ndarray


def plan_group_batches(groups: Sequence[int], batch_size: int, rank_id: int, rank_size: int,
                       seed: int) -> GroupPlan:
    """Deal the images of one epoch into batches that hold one group per step on every rank.

    Args:
        groups: int group flag per record (e.g. :func:`orientation_groups`), in record order.
        batch_size: images per rank and step.
        rank_id, rank_size: this rank and the number of ranks.
        seed: the epoch's seed; must be the same on every rank.

    Returns:
        :class:`GroupPlan`. A group whose size is not a multiple of ``batch_size * rank_size`` is filled up
        with randomly chosen images of the same group, so each image is seen at least once per epoch.

    Raises:
        ValueError: ``batch_size`` < 1, a bad rank, or no record.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank_id < rank_size:
        raise ValueError(f"rank_id {rank_id} must be in [0, rank_size={rank_size})")
    groups = np.asarray(groups, np.int64)
    if groups.size == 0:
        raise ValueError("no record to sample from")
    rng = np.random.default_rng(int(seed))
    global_batch = batch_size * rank_size
    batches, batch_groups = [], []
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        fill = -len(members) % global_batch
        if fill:
            members = np.concatenate([members, rng.choice(members, fill, replace=fill > len(members))])
        for start in range(0, len(members), global_batch):
            batches.append(members[start:start + global_batch])
            batch_groups.append(group)
    order = rng.permutation(len(batches))
    mine = [batches[i][rank_id * batch_size:(rank_id + 1) * batch_size] for i in order]
    return GroupPlan(np.concatenate(mine).astype(np.int64), np.asarray(batch_groups, np.int64)[order])


def group_bucket(group: int, max_short: int, max_long: int, buckets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """Smallest-area pad bucket (H, W) holding every training output of an image of ``group``.

    A landscape output is at most ``max_short`` x ``max_long`` (h x w), a portrait one ``max_long`` x
    ``max_short``; ties go to the earlier bucket.

    Raises:
        ValueError: no bucket holds that size; names it.
    """
    need = (max_short, max_long) if group == LANDSCAPE else (max_long, max_short)
    for bucket in sorted(buckets, key=lambda b: int(b[0]) * int(b[1])):
        if need[0] <= bucket[0] and need[1] <= bucket[1]:
            return int(bucket[0]), int(bucket[1])
    raise ValueError(f"no pad bucket of {[list(b) for b in buckets]} holds a {need[0]}x{need[1]} (h x w) training "
                     f"image; add one to data.train_pad_buckets")
