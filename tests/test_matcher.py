"""HungarianMatcher (in-graph assignment) against SciPy on a cost computed independently in PyTorch."""

import mindspore as ms
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from src.ops.matcher import HungarianMatcher
from tests.test_box_ops import torch_cxcywh_to_xyxy, torch_generalized_box_iou

COSTS = {"cost_class": 1.0, "cost_bbox": 5.0, "cost_giou": 2.0}


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def make_batch(seed, num_queries, max_boxes, num_classes, counts):
    """Random predictions and padded targets; ``counts`` gives the number of valid targets per image."""
    rng = np.random.default_rng(seed)
    batch = len(counts)
    logits = rng.normal(size=(batch, num_queries, num_classes + 1)).astype(np.float32)
    pred_boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (batch, num_queries, 2)), rng.uniform(0.05, 0.4, (batch, num_queries, 2))], -1
    ).astype(np.float32)
    tgt_boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (batch, max_boxes, 2)), rng.uniform(0.05, 0.4, (batch, max_boxes, 2))], -1
    ).astype(np.float32)
    tgt_labels = rng.integers(1, num_classes, size=(batch, max_boxes)).astype(np.int32)
    tgt_valid = np.arange(max_boxes)[None, :] < np.asarray(counts)[:, None]
    tgt_boxes[~tgt_valid] = 0.0
    tgt_labels[~tgt_valid] = 0
    return logits, pred_boxes, tgt_boxes, tgt_labels, tgt_valid


def reference_matches(logits, pred_boxes, tgt_boxes, tgt_labels, n):
    """detr models/matcher.py for one image: torch cost on the n valid targets, solved by SciPy."""
    out_prob = torch.from_numpy(logits).softmax(-1)
    out_bbox = torch.from_numpy(pred_boxes)
    tgt_bbox = torch.from_numpy(tgt_boxes[:n])
    tgt_ids = torch.from_numpy(tgt_labels[:n]).long()
    cost = (
        COSTS["cost_bbox"] * torch.cdist(out_bbox, tgt_bbox, p=1)
        - COSTS["cost_class"] * out_prob[:, tgt_ids]
        - COSTS["cost_giou"] * torch_generalized_box_iou(torch_cxcywh_to_xyxy(out_bbox), torch_cxcywh_to_xyxy(tgt_bbox))
    )
    rows, cols = linear_sum_assignment(cost.numpy())
    return set(zip(rows.tolist(), cols.tolist()))


def run_matcher(batch):
    query_to_tgt, tgt_to_query = HungarianMatcher(**COSTS)(*(ms.Tensor(x) for x in batch))
    return query_to_tgt.asnumpy(), tgt_to_query.asnumpy()


def pairs_from_outputs(query_to_tgt, tgt_to_query):
    """Matched (query, target) pairs of one image; checks that both output tables describe the same pairs."""
    from_queries = {(q, int(t)) for q, t in enumerate(query_to_tgt) if t >= 0}
    from_targets = {(int(q), t) for t, q in enumerate(tgt_to_query) if q >= 0}
    assert from_queries == from_targets
    return from_queries


@pytest.mark.parametrize(
    ("num_queries", "max_boxes", "counts"),
    [(10, 6, [6, 0, 3, 1]), (4, 6, [6, 2])],
    ids=["uneven_with_empty_image", "more_targets_than_queries"],
)
def test_matches_scipy(num_queries, max_boxes, counts):
    batch = make_batch(0, num_queries, max_boxes, 7, counts)
    query_to_tgt, tgt_to_query = run_matcher(batch)
    assert query_to_tgt.shape == (len(counts), num_queries) and query_to_tgt.dtype == np.int32
    assert tgt_to_query.shape == (len(counts), max_boxes) and tgt_to_query.dtype == np.int32
    logits, pred_boxes, tgt_boxes, tgt_labels, _ = batch
    for b, n in enumerate(counts):
        expected = reference_matches(logits[b], pred_boxes[b], tgt_boxes[b], tgt_labels[b], n)
        assert len(expected) == min(n, num_queries)
        assert pairs_from_outputs(query_to_tgt[b], tgt_to_query[b]) == expected
        assert (tgt_to_query[b, n:] == -1).all()


def test_all_empty_batch():
    query_to_tgt, tgt_to_query = run_matcher(make_batch(1, 5, 3, 4, [0, 0]))
    assert (query_to_tgt == -1).all()
    assert (tgt_to_query == -1).all()


def test_batched_equals_single_image():
    counts = [3, 5, 0]
    batch = make_batch(2, 8, 5, 6, counts)
    query_to_tgt, tgt_to_query = run_matcher(batch)
    for b in range(len(counts)):
        single_q, single_t = run_matcher(tuple(x[b : b + 1] for x in batch))
        np.testing.assert_array_equal(single_q[0], query_to_tgt[b])
        np.testing.assert_array_equal(single_t[0], tgt_to_query[b])


def test_detr_sized_problem():
    # The size used by detr's own test_hungarian: 100 queries, 15 targets, 91 classes.
    batch = make_batch(3, 100, 20, 91, [15, 20])
    query_to_tgt, tgt_to_query = run_matcher(batch)
    logits, pred_boxes, tgt_boxes, tgt_labels, _ = batch
    for b, n in enumerate([15, 20]):
        expected = reference_matches(logits[b], pred_boxes[b], tgt_boxes[b], tgt_labels[b], n)
        assert pairs_from_outputs(query_to_tgt[b], tgt_to_query[b]) == expected


def test_all_zero_costs_rejected():
    with pytest.raises(ValueError, match="zero"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
