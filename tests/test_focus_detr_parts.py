"""Focus-DETR transformer helpers against independent NumPy / torch transcriptions of the detrex definitions."""

import math

import numpy as np
import torch
from mindspore import Tensor

from src.models.focus_detr.decoder import inverse_sigmoid, sine_box_embedding
from src.models.focus_detr.model import OffsetPositionEmbeddingSine, encoder_output_proposals, encoder_reference_points
from src.models.focus_detr.postprocess import FocusDetectorPostProcess, FocusPostProcess


def _torch_sine(pos, feats, temperature):
    # detrex get_sine_pos_embed(exchange_xy=True) written from its definition.
    dim_t = temperature ** (2 * torch.div(torch.arange(feats, dtype=torch.float32), 2, rounding_mode="floor") / feats)
    parts = []
    for coord in range(pos.shape[-1]):
        x = pos[:, :, coord:coord + 1] * 2 * math.pi / dim_t
        parts.append(torch.stack((x[:, :, 0::2].sin(), x[:, :, 1::2].cos()), dim=3).flatten(2))
    parts[0], parts[1] = parts[1], parts[0]
    return torch.cat(parts, dim=2)


def test_sine_box_embedding_matches_detrex_definition():
    boxes = np.random.default_rng(0).uniform(size=(2, 5, 4)).astype(np.float32)
    ours = sine_box_embedding(Tensor(boxes), 16).asnumpy()
    ref = _torch_sine(torch.from_numpy(boxes), 16, 10000).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_inverse_sigmoid_clamps_like_detrex():
    x = np.array([0.0, 1e-4, 0.3, 0.999, 1.0, 1.5], np.float32)
    clipped = np.clip(x, 0, 1)
    ref = np.log(np.maximum(clipped, 1e-3) / np.maximum(1 - clipped, 1e-3))
    np.testing.assert_allclose(inverse_sigmoid(Tensor(x)).asnumpy(), ref, rtol=1e-5)


def test_offset_position_embedding():
    mask = np.zeros((1, 3, 4), bool)
    mask[:, :, 3] = True
    pos = OffsetPositionEmbeddingSine(4, temperature=20, offset=-0.5)(Tensor(mask)).asnumpy()
    # Valid width 3: x positions (j + 1 - 0.5) / 3 * 2 pi; channel 4 (first x channel) is sin(x / 20^0).
    x = (np.arange(4) + 0.5) / (3 + 1e-6) * 2 * np.pi
    x[3] = (3 - 0.5) / (3 + 1e-6) * 2 * np.pi  # padding repeats the last valid count
    np.testing.assert_allclose(pos[0, 4, 0], np.sin(x), atol=1e-5)
    y = (np.arange(3) + 0.5) / (3 + 1e-6) * 2 * np.pi
    np.testing.assert_allclose(pos[0, 1, :, 0], np.cos(y), atol=1e-5)


def test_proposals_and_reference_points_on_a_padded_image():
    shapes = ((4, 6), (2, 3))
    mask2d = [np.zeros((2, 4, 6), bool), np.zeros((2, 2, 3), bool)]
    mask2d[0][1, :, 4:] = True  # image 1: 4 of 6 columns valid at level 0
    mask2d[1][1, :, 2:] = True  # and 2 of 3 at level 1
    mask = np.concatenate([m.reshape(2, -1) for m in mask2d], axis=1)
    unact, valid = encoder_output_proposals(Tensor(mask), shapes)
    unact, valid = unact.asnumpy(), valid.asnumpy()
    for b, valid_w in ((0, (6, 3)), (1, (4, 2))):
        start = 0
        for lvl, (h, w) in enumerate(shapes):
            for i in range(h):
                for j in range(w):
                    box = np.array([(j + 0.5) / valid_w[lvl], (i + 0.5) / h, 0.05 * 2 ** lvl, 0.05 * 2 ** lvl])
                    ok = bool(((box > 0.01) & (box < 0.99)).all()) and not mask[b, start + i * w + j]
                    assert valid[b, start + i * w + j] == ok
                    if ok:
                        np.testing.assert_allclose(unact[b, start + i * w + j], np.log(box / (1 - box)), rtol=1e-4)
                    else:
                        assert np.isposinf(unact[b, start + i * w + j]).all()
            start += h * w
    ratios = np.array([[[1.0, 1.0], [1.0, 1.0]], [[4 / 6, 1.0], [2 / 3, 1.0]]], np.float32)
    refs = encoder_reference_points(shapes, Tensor(ratios)).asnumpy()
    # Token (1, 2) of level 0 in image 1: x = 2.5 / 4 relative to the valid part, times each level's ratio.
    np.testing.assert_allclose(refs[1, 1 * 6 + 2, :, 0], 2.5 / 4 * ratios[1, :, 0], rtol=1e-5)
    np.testing.assert_allclose(refs[1, 1 * 6 + 2, :, 1], 1.5 / 4 * ratios[1, :, 1], rtol=1e-5)


def test_postprocess_topk_over_queries_and_classes():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 6, 4)).astype(np.float32)
    boxes = rng.uniform(0.2, 0.4, size=(2, 6, 4)).astype(np.float32)
    sizes = np.array([[100.0, 200.0], [50.0, 80.0]], np.float32)
    scores, labels, out = FocusPostProcess(num_select=5)(Tensor(logits), Tensor(boxes), Tensor(sizes))
    scores, labels, out = scores.asnumpy(), labels.asnumpy(), out.asnumpy()
    for b in range(2):
        prob = 1 / (1 + np.exp(-logits[b]))
        order = np.argsort(-prob.reshape(-1))[:5]
        query, label = order // 4, order % 4
        np.testing.assert_allclose(scores[b], prob.reshape(-1)[order], rtol=1e-6)
        np.testing.assert_array_equal(labels[b], label)
        cx, cy, w, h = boxes[b, query].T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * sizes[b, [1, 0, 1, 0]]
        np.testing.assert_allclose(out[b], xyxy, rtol=1e-5)


def test_postprocess_clips_boxes_to_the_image_and_drops_empty_ones():
    # detectron2 detector_postprocess as detrex applies it: Boxes.clip to [0, w] x [0, h], then Boxes.nonempty.
    logits = np.array([[[1.0, -1.0], [3.0, 2.0], [0.5, -2.0]]], np.float32)  # [B=1, Q=3, K=2]
    boxes = np.array([[[0.9, 0.5, 0.4, 0.2],   # x 0.7..1.1: past the right edge
                       [0.5, 0.5, 0.0, 0.3],   # zero width: empty, dropped (and it holds the two best scores)
                       [0.1, 0.05, 0.1, 0.3]]], np.float32)  # y -0.1..0.2: past the top edge
    sizes = np.array([[100.0, 200.0]], np.float32)  # (h, w)
    post = FocusDetectorPostProcess(num_select=4, category_ids=[7, 9])
    scores, labels, out = (t.asnumpy() for t in post(Tensor(logits[None]), Tensor(boxes[None]), Tensor(sizes)))
    sigmoid = 1 / (1 + np.exp(-np.array([1.0, 0.5])))
    np.testing.assert_allclose(scores, [[sigmoid[0], sigmoid[1], 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(labels, [[7, 7, -1, -1]])
    np.testing.assert_allclose(out[0, :2], [[140.0, 40.0, 200.0, 60.0], [10.0, 0.0, 30.0, 20.0]], atol=1e-4)
    assert (out[0, 2:, 2] <= out[0, 2:, 0]).all()  # the dropped slots hold the empty clipped box
