"""Focus-DETR ChannelMapper neck (vs torch conv + nn.GroupNorm with copied weights) and the logit-stable focal
losses (vs torchvision-style and reference-style torch code). Graph mode."""

import numpy as np
import torch
import torch.nn.functional as F
from mindspore import Tensor, nn

from src.models.focus_detr.fts import MaskPredictor
from src.models.focus_detr.losses import foreground_supervision_loss, sigmoid_focal_loss
from src.models.focus_detr.neck import ChannelMapper, GroupNorm


class _Focal(nn.Cell):
    def construct(self, logits, targets, num_boxes):
        return sigmoid_focal_loss(logits, targets, num_boxes)


class _Foreground(nn.Cell):
    def construct(self, logits, labels):
        return foreground_supervision_loss(logits, labels)


def _torch_focal(logits, targets, num_boxes, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss (reduction sum) divided by num_boxes."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def _reference_log_pt(logits, targets, alpha=0.25, gamma=2.0):
    """The detrex foreground loss element form: -w (1 - pt)^gamma log(pt), in float32 NumPy."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        prob = 1.0 / (1.0 + np.exp(-logits))
        pt = prob * targets + (1 - prob) * (1 - targets)
        w = alpha * targets + (1 - alpha) * (1 - targets)
        return -w * (1 - pt) ** gamma * np.log(pt)


def test_focal_loss_equals_torchvision_form():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(2, 7, 5)) * 3).astype(np.float32)
    targets = (rng.random((2, 7, 5)) < 0.2).astype(np.float32)
    got = _Focal()(Tensor(logits), Tensor(targets), Tensor(np.float32(3.0))).asnumpy()
    want = _torch_focal(torch.from_numpy(logits), torch.from_numpy(targets), 3.0).item()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_focal_losses_finite_for_saturated_logits():
    logits = np.array([[100.0, -100.0, 100.0, -100.0, 30.0, -30.0]], np.float32)
    targets = np.array([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]], np.float32)
    assert not np.all(np.isfinite(_reference_log_pt(logits, targets)))  # the log(pt) form overflows here
    focal = _Focal()(Tensor(logits[None]), Tensor(targets[None]), Tensor(np.float32(1.0))).asnumpy()
    want = _torch_focal(torch.from_numpy(logits).double(), torch.from_numpy(targets).double(), 1.0).item()
    assert np.isfinite(focal)
    np.testing.assert_allclose(focal, want, rtol=1e-5)
    fg = _Foreground()(Tensor(logits), Tensor(targets)).asnumpy()
    assert np.isfinite(fg)
    # Positives: 100 (~0), -100 (0.25*100), -30 (0.25*30); negatives: 100 (0.75*100), 30 (0.75*30); /3 positives.
    np.testing.assert_allclose(fg, (0.25 * 100 + 0.25 * 30 + 0.75 * 100 + 0.75 * 30) / 3, rtol=1e-5)


def test_foreground_loss_equals_reference_for_moderate_logits():
    """Per image: sum of focal over all tokens / max(#positives, 1); then mean over the batch."""
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 40)) * 2).astype(np.float32)
    labels = (rng.random((3, 40)) < 0.15).astype(np.float32)
    labels[2] = 0.0  # an image without foreground normalizes by 1
    got = _Foreground()(Tensor(logits), Tensor(labels)).asnumpy()
    per_image = _reference_log_pt(logits.astype(np.float64), labels.astype(np.float64)).sum(1)
    want = (per_image / np.maximum(labels.sum(1), 1)).mean()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _copy_conv_norm(cell, conv, norm):
    params = {p.name.split(".")[-2] + "." + p.name.split(".")[-1]: p.asnumpy() for p in cell.get_parameters()}
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(params["conv.weight"]))
        conv.bias.copy_(torch.from_numpy(params["conv.bias"]))
        norm.weight.copy_(torch.from_numpy(params["norm.weight"]))
        norm.bias.copy_(torch.from_numpy(params["norm.bias"]))


def test_group_norm_equals_torch():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(2, 64, 5, 6)) * 4 + 1).astype(np.float32)
    gamma = rng.normal(size=64).astype(np.float32)
    beta = rng.normal(size=64).astype(np.float32)
    cell = GroupNorm(32, 64)
    cell.weight.set_data(Tensor(gamma))
    cell.bias.set_data(Tensor(beta))
    ref = torch.nn.GroupNorm(32, 64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), want, atol=1e-5)


def test_channel_mapper_shapes_names_and_torch_parity():
    rng = np.random.default_rng(3)
    in_channels = (16, 24, 40)
    neck = ChannelMapper(in_channels, out_channels=64, num_outs=4)
    names = sorted(p.name for p in neck.get_parameters())
    assert "convs.2.norm.weight" in names and "extra_convs.0.conv.weight" in names
    assert len(names) == 16
    feats = [rng.normal(size=(2, c, h, w)).astype(np.float32) for c, (h, w) in zip(in_channels, ((20, 26), (10, 13),
                                                                                                   (5, 7)))]
    outs = neck(tuple(Tensor(f) for f in feats))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 20, 26), (2, 64, 10, 13), (2, 64, 5, 7), (2, 64, 3, 4)]

    cells = list(neck.convs) + list(neck.extra_convs)
    specs = [(c, 1, 1, 0) for c in in_channels] + [(in_channels[-1], 3, 2, 1)]
    inputs = feats + [feats[-1]]  # the extra level reads the raw last backbone map
    for cell, (cin, k, stride, pad), x, out in zip(cells, specs, inputs, outs):
        conv = torch.nn.Conv2d(cin, 64, k, stride=stride, padding=pad)
        norm = torch.nn.GroupNorm(32, 64)
        _copy_conv_norm(cell, conv, norm)
        with torch.no_grad():
            want = norm(conv(torch.from_numpy(x))).numpy()
        np.testing.assert_allclose(out.asnumpy(), want, atol=1e-4)


def test_mask_predictor_valid_pooling_ignores_padding():
    """pool_padding=False: the global half is averaged over valid tokens, so padded token values do not matter."""
    rng = np.random.default_rng(4)
    cell = MaskPredictor(32, 32, pool_padding=False)
    x = rng.normal(size=(1, 10, 32)).astype(np.float32)
    pad = np.zeros((1, 10), bool)
    pad[0, 6:] = True
    base = cell(Tensor(x), Tensor(pad)).asnumpy()
    x2 = x.copy()
    x2[0, 6:] += 5.0
    moved = cell(Tensor(x2), Tensor(pad)).asnumpy()
    np.testing.assert_allclose(moved[0, :6], base[0, :6], atol=1e-6)
    reference = MaskPredictor(32, 32, pool_padding=True)
    for src, dst in zip(cell.get_parameters(), reference.get_parameters()):
        dst.set_data(src.data)
    assert not np.allclose(reference(Tensor(x2), Tensor(pad)).asnumpy()[0, :6], base[0, :6], atol=1e-6)
