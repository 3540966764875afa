"""Box utilities: format round trip, IoU/GIoU against the definitions and a PyTorch reference, NaN safety."""

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn

from src.ops.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
)


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def torch_box_iou(boxes1, boxes2):
    """Pairwise IoU of xyxy boxes written from the definition (as in detr util/box_ops.py)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def torch_generalized_box_iou(boxes1, boxes2):
    """Pairwise GIoU of xyxy boxes, following detr util/box_ops.py (no eps, valid boxes only)."""
    iou, union = torch_box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - (area - union) / area


def torch_cxcywh_to_xyxy(boxes):
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


class _Pairwise(nn.Cell):
    def construct(self, boxes1, boxes2):
        iou, union = box_iou(boxes1, boxes2)
        return iou, union, generalized_box_iou(boxes1, boxes2)


class _Elementwise(nn.Cell):
    def construct(self, boxes1, boxes2):
        iou, union = elementwise_box_iou(boxes1, boxes2)
        return iou, union, elementwise_generalized_box_iou(boxes1, boxes2)


class _Convert(nn.Cell):
    def construct(self, boxes):
        xyxy = box_cxcywh_to_xyxy(boxes)
        return xyxy, box_xyxy_to_cxcywh(xyxy), box_area(xyxy)


def _random_xyxy(rng, n):
    xy0 = rng.uniform(0.0, 0.7, size=(n, 2))
    wh = rng.uniform(0.01, 0.3, size=(n, 2))
    return np.concatenate([xy0, xy0 + wh], axis=1).astype(np.float32)


def test_cxcywh_xyxy_round_trip():
    rng = np.random.default_rng(0)
    cxcywh = rng.uniform(0.05, 0.95, size=(2, 7, 4)).astype(np.float32)
    xyxy, back, area = (t.asnumpy() for t in _Convert()(ms.Tensor(cxcywh)))
    center, size = cxcywh[..., :2], cxcywh[..., 2:]
    expected_xyxy = np.concatenate([center - size / 2, center + size / 2], axis=-1)
    np.testing.assert_allclose(xyxy, expected_xyxy, atol=1e-6)
    np.testing.assert_allclose(back, cxcywh, atol=1e-6)
    np.testing.assert_allclose(area, cxcywh[..., 2] * cxcywh[..., 3], atol=1e-6)


def test_iou_giou_hand_computed():
    # Unit square vs. the square shifted by (0.5, 0.5): intersection 0.25, union 1.75, enclosing 1.5^2.
    # Unit square vs. a disjoint square at (2, 0)-(3, 1): IoU 0, union 2, enclosing 3.
    boxes1 = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    boxes2 = np.array([[0.5, 0.5, 1.5, 1.5], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]], np.float32)
    iou, union, giou = (t.asnumpy() for t in _Pairwise()(ms.Tensor(boxes1), ms.Tensor(boxes2)))
    np.testing.assert_allclose(iou, [[0.25 / 1.75, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(union, [[1.75, 2.0, 1.0]], atol=1e-6)
    expected_giou = [[0.25 / 1.75 - (2.25 - 1.75) / 2.25, 0.0 - (3.0 - 2.0) / 3.0, 1.0]]
    np.testing.assert_allclose(giou, expected_giou, atol=1e-6)


def test_pairwise_matches_torch_reference():
    rng = np.random.default_rng(1)
    boxes1 = _random_xyxy(rng, 6)
    boxes2 = _random_xyxy(rng, 4)
    iou, union, giou = (t.asnumpy() for t in _Pairwise()(ms.Tensor(boxes1), ms.Tensor(boxes2)))
    ref_iou, ref_union = torch_box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2))
    ref_giou = torch_generalized_box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2))
    assert iou.shape == (6, 4)
    np.testing.assert_allclose(iou, ref_iou.numpy(), atol=1e-6)
    np.testing.assert_allclose(union, ref_union.numpy(), atol=1e-6)
    np.testing.assert_allclose(giou, ref_giou.numpy(), atol=1e-6)


def test_batched_pairwise_and_elementwise_agree_with_diagonal():
    rng = np.random.default_rng(2)
    boxes1 = np.stack([_random_xyxy(rng, 5) for _ in range(3)])
    boxes2 = np.stack([_random_xyxy(rng, 5) for _ in range(3)])
    _, _, giou = (t.asnumpy() for t in _Pairwise()(ms.Tensor(boxes1), ms.Tensor(boxes2)))
    diag_iou, _, diag_giou = (t.asnumpy() for t in _Elementwise()(ms.Tensor(boxes1), ms.Tensor(boxes2)))
    assert giou.shape == (3, 5, 5)
    for b in range(3):
        ref_iou, _ = torch_box_iou(torch.from_numpy(boxes1[b]), torch.from_numpy(boxes2[b]))
        ref_giou = torch_generalized_box_iou(torch.from_numpy(boxes1[b]), torch.from_numpy(boxes2[b]))
        np.testing.assert_allclose(giou[b], ref_giou.numpy(), atol=1e-6)
        np.testing.assert_allclose(diag_iou[b], np.diag(ref_iou.numpy()), atol=1e-6)
        np.testing.assert_allclose(diag_giou[b], np.diag(ref_giou.numpy()), atol=1e-6)


def test_degenerate_boxes_are_finite():
    # Zero-size boxes (also two at the same point), a zero-width box and an inverted box.
    boxes = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.3, 0.3, 0.3, 0.6],
            [0.8, 0.8, 0.2, 0.2],
            [0.1, 0.1, 0.4, 0.4],
        ],
        np.float32,
    )
    iou, union, giou = (t.asnumpy() for t in _Pairwise()(ms.Tensor(boxes), ms.Tensor(boxes)))
    assert np.isfinite(iou).all() and np.isfinite(union).all() and np.isfinite(giou).all()
    assert (iou >= 0).all() and (iou <= 1).all()
    assert (giou >= -1).all() and (giou <= 1).all()
    # Two empty boxes at the same point have nothing in common and an empty hull: both measures are 0.
    assert iou[0, 1] == 0.0 and giou[0, 1] == 0.0
    # The well-formed box still has IoU 1 with itself.
    np.testing.assert_allclose(iou[4, 4], 1.0, atol=1e-6)


def test_degenerate_boxes_have_finite_gradient():
    class GiouSum(nn.Cell):
        def construct(self, boxes1, boxes2):
            giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes1), box_cxcywh_to_xyxy(boxes2))
            return giou.sum()

    boxes1 = ms.Tensor(np.array([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.0, 0.1]], np.float32))
    boxes2 = ms.Tensor(np.array([[0.5, 0.5, 0.0, 0.0], [0.7, 0.7, 0.0, 0.0]], np.float32))
    value, grads = ms.value_and_grad(GiouSum(), grad_position=(0, 1))(boxes1, boxes2)
    assert np.isfinite(value.asnumpy())
    for grad in grads:
        assert np.isfinite(grad.asnumpy()).all()
