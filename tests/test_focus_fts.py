"""Focus-DETR foreground token selector: modulation order, selection counts with padding, nested cascade sets,
FCOS-style labels. Graph mode; expected values come from torch/NumPy or from hand counts, never from the code."""

import mindspore as ms
import numpy as np
import torch
import torch.nn.functional as F
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import Uniform, initializer

from src.models.focus_detr.fts import (
    CASCADE_RATIOS,
    FOCUS_RHO,
    MaskPredictor,
    fcos_foreground_labels,
    select_foreground_tokens,
    top_down_foreground_scores,
    upsample_align_corners,
    weighted_memory_foreground_scores,
)

SHAPES = ((8, 8), (4, 4), (2, 2), (1, 1))


class ForegroundTokenSelector(nn.Cell):
    """The FTS parameters (``alpha`` ``[L-1]``, U(-0.3, 0.3), and the ``enc_mask_predictor``) with scoring and
    cascade selection, as the full model's transformer runs them; outputs ``(scores [B, N], indices [B, k_0],
    layer_valid, focus_nums [B])``."""

    def __init__(self, embed_dim, spatial_shapes, rho=FOCUS_RHO, cascade=CASCADE_RATIOS):
        super().__init__()
        self.spatial_shapes, self.rho, self.cascade = tuple(spatial_shapes), rho, tuple(cascade)
        self.alpha = ms.Parameter(initializer(Uniform(0.3), (len(spatial_shapes) - 1,), ms.float32), name="alpha")
        self.enc_mask_predictor = MaskPredictor(embed_dim, embed_dim, True)

    def construct(self, memory, padding_mask):
        scores = top_down_foreground_scores(memory, padding_mask, self.spatial_shapes, self.enc_mask_predictor,
                                            self.alpha)
        indices, layer_valid, focus = select_foreground_tokens(scores, padding_mask, self.rho, self.cascade)
        return scores, indices, layer_valid, focus


class _Upsample(nn.Cell):
    def __init__(self, out_hw):
        super().__init__()
        self.out_hw = out_hw

    def construct(self, x):
        return upsample_align_corners(x, self.out_hw)


class _FirstChannel(nn.Cell):
    """Stand-in predictor: the score of a token is its channel 0, so the modulation can be checked by hand."""

    def construct(self, x, padding_mask):
        return x[:, :, 0]


class _TopDown(nn.Cell):
    """Runs a top-down scoring function (detrex's by default) with the channel-0 stand-in predictor."""

    def __init__(self, shapes, alpha, scoring=top_down_foreground_scores):
        super().__init__()
        self.shapes = shapes
        self.scoring = scoring
        self.predictor = _FirstChannel()
        self.alpha = ms.Parameter(Tensor(np.asarray(alpha, np.float32)), name="alpha")

    def construct(self, memory, padding_mask):
        return self.scoring(memory, padding_mask, self.shapes, self.predictor, self.alpha)


class _Select(nn.Cell):
    def construct(self, scores, padding_mask):
        return select_foreground_tokens(scores, padding_mask)


class _Labels(nn.Cell):
    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def construct(self, boxes, valid, sizes):
        return fcos_foreground_labels(boxes, valid, sizes, self.shapes)


def _torch_up(x, hw):
    return F.interpolate(torch.from_numpy(x)[:, None], size=hw, mode="bilinear", align_corners=True)[:, 0].numpy()


def test_upsample_equals_torch_align_corners():
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    for hw in ((7, 9), (3, 4), (6, 1), (1, 5)):
        got = _Upsample(hw)(Tensor(x)).asnumpy()
        np.testing.assert_allclose(got, _torch_up(x, hw), atol=1e-6)


def test_top_down_modulation_by_hand():
    """With score = channel 0: s3 = m3, s_l = m_l * (1 + alpha[2-l] * up(s_{l+1})), coarsest first."""
    rng = np.random.default_rng(1)
    alpha = [0.3, -0.2, 0.5]
    n = sum(h * w for h, w in SHAPES)
    memory = rng.normal(size=(2, n, 4)).astype(np.float32)
    pad = np.zeros((2, n), bool)
    net = _TopDown(SHAPES, alpha)
    got = net(Tensor(memory), Tensor(pad)).asnumpy()

    starts = np.cumsum([0] + [h * w for h, w in SHAPES])
    ch0 = [memory[:, starts[i]:starts[i + 1], 0].reshape(2, *SHAPES[i]) for i in range(4)]
    expected = [None] * 4
    expected[3] = ch0[3]
    for lvl in (2, 1, 0):
        up = _torch_up(expected[lvl + 1], SHAPES[lvl])
        expected[lvl] = ch0[lvl] + ch0[lvl] * up * alpha[2 - lvl]
    np.testing.assert_allclose(got, np.concatenate([e.reshape(2, -1) for e in expected], 1), rtol=1e-5, atol=1e-6)

    # A change of the coarse (2x2) level's scores moves the next finer level's scores by m * alpha * up(change)
    # and leaves the coarser level untouched; a change of the finest level moves nothing above it.
    bumped = memory.copy()
    bumped[:, starts[2]:starts[3], 0] += rng.normal(size=(2, 4)).astype(np.float32)
    got2 = net(Tensor(bumped), Tensor(pad)).asnumpy()
    change = (got2 - got)[:, starts[2]:starts[3]].reshape(2, 2, 2)
    assert np.abs(change).min() > 1e-3
    move = (got2 - got)[:, starts[1]:starts[2]].reshape(2, 4, 4)
    np.testing.assert_allclose(move, ch0[1] * alpha[1] * _torch_up(change, (4, 4)), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got2[:, starts[3]:], got[:, starts[3]:])
    fine = memory.copy()
    fine[:, :64] += 1.0
    got3 = net(Tensor(fine), Tensor(pad)).asnumpy()
    np.testing.assert_array_equal(got3[:, 64:], got[:, 64:])


def _torch_mask_predictor(cell):
    params = {p.name.split("enc_mask_predictor.")[-1]: torch.from_numpy(p.asnumpy()) for p in cell.get_parameters()}
    dim = params["layer1.1.weight"].shape[0]
    ln = torch.nn.LayerNorm(params["layer1.0.gamma"].shape[0])
    lin = [torch.nn.Linear(*params[f"{k}.weight"].shape[::-1]) for k in ("layer1.1", "layer2.0", "layer2.2",
                                                                        "layer2.4")]
    with torch.no_grad():
        ln.weight.copy_(params["layer1.0.gamma"])
        ln.bias.copy_(params["layer1.0.beta"])
        for layer, key in zip(lin, ("layer1.1", "layer2.0", "layer2.2", "layer2.4")):
            layer.weight.copy_(params[f"{key}.weight"])
            layer.bias.copy_(params[f"{key}.bias"])

    def predict(x):
        z = F.gelu(lin[0](ln(x)))
        z = torch.cat([z[..., : dim // 2], z[..., dim // 2:].mean(1, keepdim=True).expand(-1, x.shape[1], -1)], -1)
        return lin[3](F.gelu(lin[2](F.gelu(lin[1](z))))).squeeze(-1)

    return predict


def test_selector_equals_torch_reference_algorithm():
    """Full FTS scoring (MaskPredictor + modulation) vs the reference's steps rebuilt in torch with copied weights."""
    rng = np.random.default_rng(2)
    fts = ForegroundTokenSelector(32, SHAPES)
    fts.alpha.set_data(Tensor(np.array([0.25, -0.3, 0.2], np.float32)))
    n = sum(h * w for h, w in SHAPES)
    memory = rng.normal(size=(2, n, 32)).astype(np.float32)
    pad = np.zeros((2, n), bool)
    scores, indices, layer_valid, focus = fts(Tensor(memory), Tensor(pad))

    predict = _torch_mask_predictor(fts.enc_mask_predictor)
    alpha = torch.tensor([0.25, -0.3, 0.2])
    starts = np.cumsum([0] + [h * w for h, w in SHAPES])
    mem = torch.from_numpy(memory)
    out = [None] * 4
    with torch.no_grad():
        prev = predict(mem[:, starts[3]:]).reshape(2, 1, 1, 1)
        out[3] = prev
        for i in (1, 2, 3):
            lvl = 3 - i
            h, w = SHAPES[lvl]
            up = F.interpolate(prev, (h, w), mode="bilinear", align_corners=True).reshape(2, h * w, 1)
            lvl_mem = mem[:, starts[lvl]:starts[lvl + 1]]
            prev = predict(lvl_mem + lvl_mem * up * alpha[i - 1]).reshape(2, 1, h, w)
            out[lvl] = prev
    expected = torch.cat([o.reshape(2, -1) for o in out], 1).numpy()
    np.testing.assert_allclose(scores.asnumpy(), expected, rtol=1e-4, atol=1e-5)
    top = indices.asnumpy()
    assert top.shape == (2, n // 2 + 1)
    for b in range(2):
        assert set(top[b]) == set(np.argsort(-expected[b])[: n // 2 + 1])
    assert [v.shape[1] for v in layer_valid] == [43, 34, 25, 25, 17, 8]  # int(c * (85 // 2 + 1)) in float32
    np.testing.assert_array_equal(focus.asnumpy(), [43, 43])


def _padded_case():
    """Two levels (4x4, 2x2), N = 20; image 1 pads the right half of level 0 and the right column of level 1."""
    shapes = ((4, 4), (2, 2))
    pad = np.zeros((2, 20), bool)
    pad[1, :16] = (np.arange(16) % 4) >= 2
    pad[1, 16:] = (np.arange(4) % 2) == 1
    scores = np.random.default_rng(3).permutation(40).reshape(2, 20).astype(np.float32)
    scores[pad] += 100.0  # padded tokens outrank every valid one unless they are excluded
    return shapes, scores, pad


def test_keep_counts_per_image_with_padding():
    _, scores, pad = _padded_case()
    indices, layer_valid, focus = _Select()(Tensor(scores), Tensor(pad))
    indices = indices.asnumpy()
    # Image 0: 20 valid -> int(20 * 0.5) + 1 = 11 kept; image 1: 8 + 2 = 10 valid -> int(10 * 0.5) + 1 = 6.
    np.testing.assert_array_equal(focus.asnumpy(), [11, 6])
    first = layer_valid[0].asnumpy()
    np.testing.assert_array_equal(first.sum(1), [11, 6])
    for b, kept in ((0, 11), (1, 6)):
        chosen = indices[b][first[b]]
        assert not pad[b, chosen].any()
        valid_ids = np.flatnonzero(~pad[b])
        best = valid_ids[np.argsort(-scores[b, valid_ids])[:kept]]
        np.testing.assert_array_equal(chosen, best)  # sorted by descending score, distinct scores


def test_cascade_sets_are_nested_and_follow_ratios():
    _, scores, pad = _padded_case()
    indices, layer_valid, _ = _Select()(Tensor(scores), Tensor(pad))
    indices = indices.asnumpy()
    # Batch maximum K = 11: static sizes int(c * 11) = 11, 8, 6, 6, 4, 2; image 1 is capped at its own 6.
    assert [v.shape[1] for v in layer_valid] == [11, 8, 6, 6, 4, 2]
    counts = np.array([v.asnumpy().sum(1) for v in layer_valid])
    np.testing.assert_array_equal(counts[:, 0], [11, 8, 6, 6, 4, 2])
    np.testing.assert_array_equal(counts[:, 1], [6, 6, 6, 6, 4, 2])
    for b in range(2):
        sets = [set(indices[b, : v.shape[1]][v.asnumpy()[b]]) for v in layer_valid]
        for prev, cur in zip(sets, sets[1:]):
            assert cur <= prev
        assert not any(pad[b, list(s)].any() for s in sets)


def _rule_labels(boxes_xyxy, shapes, strides, ranges):
    """The FCOS rule token by token, in plain Python."""
    out = []
    for (h, w), s, (lo, hi) in zip(shapes, strides, ranges):
        for i in range(h):
            for j in range(w):
                x, y = j * s + s // 2, i * s + s // 2
                hit = False
                for x0, y0, x1, y1 in boxes_xyxy:
                    d = (x - x0, y - y0, x1 - x, y1 - y)
                    hit |= min(d) > 0 and lo < max(d) <= hi
                out.append(float(hit))
    return np.array(out, np.float32)


def test_fcos_labels_on_hand_placed_boxes():
    shapes = ((16, 16), (8, 8), (4, 4), (2, 2))  # a 128x128 padded input
    strides, ranges = (8, 16, 32, 64), ((-1, 64), (64, 128), (128, 256), (256, 999999))
    boxes = np.zeros((2, 3, 4), np.float32)
    valid = np.zeros((2, 3), bool)
    # Image 0 (128x128): A = xyxy (0, 0, 40, 40); B = (16, 16, 112, 112); a padded row covering the image.
    boxes[0, 0] = (20 / 128, 20 / 128, 40 / 128, 40 / 128)
    boxes[0, 1] = (0.5, 0.5, 96 / 128, 96 / 128)
    boxes[0, 2] = (0.5, 0.5, 1.0, 1.0)
    valid[0, :2] = True
    # Image 1 (h 64, w 96, padded to 128x128): C = the whole image, xyxy (0, 0, 96, 64).
    boxes[1, 0] = (0.5, 0.5, 1.0, 1.0)
    valid[1, 0] = True
    sizes = np.array([[128, 128], [64, 96]], np.float32)
    labels = _Labels(shapes)(Tensor(boxes), Tensor(valid), Tensor(sizes)).asnumpy()

    split = np.cumsum([h * w for h, w in shapes])[:-1]
    per_level = [[int(part.sum()) for part in np.split(labels[b], split)] for b in range(2)]
    # A: centres 4..36 on stride 8, all with max distance <= 64 -> 25 level-0 tokens, nothing coarser.
    # B: 6x6 stride-16 centres inside; those with max distance <= 64 (centres 56, 72) fall to level 0, leaving
    #    32 at level 1; on level 0 the centres 52..76 (4x4 = 16) have max distance <= 64.
    assert per_level[0] == [25 + 16, 32, 0, 0]
    # C (96x64): level 0 keeps x centres 36..60 (4) x all 8 rows = 32; level 1 keeps x in {8, 24, 72, 88} x 4 rows.
    assert per_level[1] == [32, 16, 0, 0]
    np.testing.assert_array_equal(labels[0], _rule_labels([(0, 0, 40, 40), (16, 16, 112, 112)], shapes, strides,
                                                          ranges))
    np.testing.assert_array_equal(labels[1], _rule_labels([(0, 0, 96, 64)], shapes, strides, ranges))


def test_selector_gradients_reach_alpha_and_predictor():
    fts = ForegroundTokenSelector(32, SHAPES)
    n = sum(h * w for h, w in SHAPES)
    memory = Tensor(np.random.default_rng(4).normal(size=(1, n, 32)).astype(np.float32))
    pad = Tensor(np.zeros((1, n), bool))

    class _Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.fts = fts

        def construct(self, x, mask):
            return self.fts(x, mask)[0].sum()

    grads = ms.grad(_Loss(), grad_position=None, weights=fts.trainable_params())(memory, pad)
    names = [p.name.split(".")[-1] for p in fts.trainable_params()]
    alpha_grad = grads[names.index("alpha")].asnumpy()
    assert np.all(np.isfinite(alpha_grad)) and np.abs(alpha_grad).sum() > 0
    assert all(ops.isfinite(g).all() for g in grads)


def test_weighted_memory_scores_equal_the_model_zoo_algorithm_in_torch():
    # The MindSpore model zoo's 5-scale scoring written in torch from its DeformableTransformer.construct: the
    # coarser level's score * memory, as a [B, 1, N, C] image, bilinearly resized (half-pixel) to (N_finer, C),
    # times alpha[0], alpha[0], alpha[1], alpha[2] from the coarsest step down.
    shapes = ((6, 8), (3, 4), (2, 2), (1, 2), (1, 1))
    alpha = [0.3, -0.7, 1.1]
    rng = np.random.default_rng(5)
    memory = rng.normal(size=(2, sum(h * w for h, w in shapes), 4)).astype(np.float32)
    scoring = _TopDown(shapes, alpha, weighted_memory_foreground_scores)
    got = scoring(Tensor(memory), Tensor(np.zeros(memory.shape[:2], bool))).asnumpy()

    starts = np.cumsum([0] + [h * w for h, w in shapes])
    levels = [torch.from_numpy(memory[:, starts[i]:starts[i + 1]]) for i in range(len(shapes))]
    scores = [None] * len(shapes)
    carried = None
    for lvl, step_alpha in zip(range(4, -1, -1), [None, alpha[0], alpha[0], alpha[1], alpha[2]]):
        mem = levels[lvl]
        if carried is not None:
            resized = F.interpolate(carried[:, None], size=tuple(mem.shape[1:]), mode="bilinear", align_corners=False)
            mem = mem + resized[:, 0] * step_alpha
        scores[lvl] = mem[:, :, 0:1]
        carried = scores[lvl] * mem
    expected = torch.cat(scores, dim=1)[:, :, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
