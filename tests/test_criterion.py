"""SetCriterion against a PyTorch re-implementation of detr's SetCriterion (SciPy matching)."""

import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import nn
from scipy.optimize import linear_sum_assignment

from src.models.detr.criterion import build_criterion
from tests.test_box_ops import torch_cxcywh_to_xyxy, torch_generalized_box_iou

NUM_CLASSES = 6
LOSS_CFG = {
    "set_cost_class": 1.0,
    "set_cost_bbox": 5.0,
    "set_cost_giou": 2.0,
    "class_loss_coef": 1.0,
    "bbox_loss_coef": 5.0,
    "giou_loss_coef": 2.0,
    "eos_coef": 0.1,
}


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def make_inputs(seed, layers, num_queries, max_boxes, counts):
    rng = np.random.default_rng(seed)
    batch = len(counts)
    logits = rng.normal(size=(layers, batch, num_queries, NUM_CLASSES + 1)).astype(np.float32)
    pred_boxes = 1.0 / (1.0 + np.exp(-rng.normal(size=(layers, batch, num_queries, 4))))
    tgt_boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (batch, max_boxes, 2)), rng.uniform(0.05, 0.4, (batch, max_boxes, 2))], -1
    ).astype(np.float32)
    tgt_labels = rng.integers(1, NUM_CLASSES, size=(batch, max_boxes)).astype(np.int32)
    tgt_valid = np.arange(max_boxes)[None, :] < np.asarray(counts)[:, None]
    tgt_boxes[~tgt_valid] = 0.0
    tgt_labels[~tgt_valid] = 0
    return logits, pred_boxes.astype(np.float32), tgt_boxes, tgt_labels, tgt_valid


def torch_layer_losses(logits, boxes, tgt_boxes, tgt_labels, counts, num_boxes):
    """detr SetCriterion.loss_labels / loss_boxes for one layer, with detr's HungarianMatcher + SciPy."""
    logits = torch.from_numpy(logits)
    boxes = torch.from_numpy(boxes)
    targets = [
        (torch.from_numpy(tgt_boxes[b, :n]), torch.from_numpy(tgt_labels[b, :n]).long()) for b, n in enumerate(counts)
    ]
    indices = []
    for b, (t_boxes, t_labels) in enumerate(targets):
        cost = (
            LOSS_CFG["set_cost_bbox"] * torch.cdist(boxes[b], t_boxes, p=1)
            - LOSS_CFG["set_cost_class"] * logits[b].softmax(-1)[:, t_labels]
            - LOSS_CFG["set_cost_giou"]
            * torch_generalized_box_iou(torch_cxcywh_to_xyxy(boxes[b]), torch_cxcywh_to_xyxy(t_boxes))
        )
        rows, cols = linear_sum_assignment(cost.numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))

    empty_weight = torch.ones(NUM_CLASSES + 1)
    empty_weight[-1] = LOSS_CFG["eos_coef"]
    target_classes = torch.full(logits.shape[:2], NUM_CLASSES, dtype=torch.long)
    for b, (rows, cols) in enumerate(indices):
        target_classes[b, rows] = targets[b][1][cols]
    loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, empty_weight)

    src = torch.cat([boxes[b, rows] for b, (rows, _) in enumerate(indices)])
    tgt = torch.cat([targets[b][0][cols] for b, (_, cols) in enumerate(indices)])
    loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
    if len(src):
        giou = torch.diag(torch_generalized_box_iou(torch_cxcywh_to_xyxy(src), torch_cxcywh_to_xyxy(tgt)))
    else:
        giou = torch.zeros(0)
    loss_giou = (1 - giou).sum() / num_boxes
    return np.array([loss_ce.item(), loss_bbox.item(), loss_giou.item()])


def torch_reference(inputs, counts, aux_loss):
    logits, pred_boxes, tgt_boxes, tgt_labels, _ = inputs
    num_boxes = max(float(sum(counts)), 1.0)
    per_layer = [
        torch_layer_losses(logits[layer], pred_boxes[layer], tgt_boxes, tgt_labels, counts, num_boxes)
        for layer in range(len(logits))
    ]
    weights = np.array([LOSS_CFG["class_loss_coef"], LOSS_CFG["bbox_loss_coef"], LOSS_CFG["giou_loss_coef"]])
    used = per_layer if aux_loss else per_layer[-1:]
    return sum(float(weights @ terms) for terms in used), per_layer


def run_criterion(inputs, aux_loss):
    criterion = build_criterion(NUM_CLASSES, aux_loss, **LOSS_CFG)
    loss, terms = criterion(*(ms.Tensor(x) for x in inputs))
    return float(loss.asnumpy()), terms.asnumpy()


@pytest.mark.parametrize("aux_loss", [True, False])
def test_matches_torch_reference(aux_loss):
    counts = [4, 0, 2]
    inputs = make_inputs(0, 2, 7, 5, counts)
    loss, terms = run_criterion(inputs, aux_loss)
    ref_loss, ref_per_layer = torch_reference(inputs, counts, aux_loss)
    assert terms.shape == (3,) and terms.dtype == np.float32
    np.testing.assert_allclose(terms, ref_per_layer[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)


def test_each_layer_matches_torch_reference():
    # A one-layer criterion on layer l alone must reproduce the reference terms of that layer, which checks
    # that every layer is matched with its own predictions.
    counts = [3, 5]
    inputs = make_inputs(1, 3, 6, 5, counts)
    _, ref_per_layer = torch_reference(inputs, counts, aux_loss=True)
    for layer in range(3):
        single = (inputs[0][layer : layer + 1], inputs[1][layer : layer + 1], *inputs[2:])
        _, terms = run_criterion(single, aux_loss=True)
        np.testing.assert_allclose(terms, ref_per_layer[layer], rtol=1e-5, atol=1e-5)


def test_empty_targets():
    counts = [0, 0]
    inputs = make_inputs(2, 2, 5, 3, counts)
    loss, terms = run_criterion(inputs, aux_loss=True)
    assert terms[1] == 0.0 and terms[2] == 0.0
    assert np.isfinite(terms[0]) and terms[0] > 0
    ref_loss, ref_per_layer = torch_reference(inputs, counts, aux_loss=True)
    np.testing.assert_allclose(terms, ref_per_layer[-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)


class _LossOnly(nn.Cell):
    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion

    def construct(self, pred_logits, pred_boxes, tgt_boxes, tgt_labels, tgt_valid):
        return self.criterion(pred_logits, pred_boxes, tgt_boxes, tgt_labels, tgt_valid)[0]


@pytest.mark.parametrize("counts", [[3, 0], [0, 0]], ids=["some_targets", "no_targets"])
def test_gradient_is_finite(counts):
    inputs = [ms.Tensor(x) for x in make_inputs(3, 2, 5, 3, counts)]
    net = _LossOnly(build_criterion(NUM_CLASSES, True, **LOSS_CFG))
    loss, (grad_logits, grad_boxes) = ms.value_and_grad(net, grad_position=(0, 1))(*inputs)
    assert np.isfinite(loss.asnumpy())
    grad_logits = grad_logits.asnumpy()
    grad_boxes = grad_boxes.asnumpy()
    assert np.isfinite(grad_logits).all() and np.isfinite(grad_boxes).all()
    assert np.abs(grad_logits).sum() > 0
    # Boxes get a gradient exactly when some target exists.
    assert (np.abs(grad_boxes).sum() > 0) == (sum(counts) > 0)
