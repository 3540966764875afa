"""DeFRCN's solver: detectron2 WarmupMultiStepLR (multiplied warmup and decay), momentum SGD parity with torch,
bias groups, the linear scaling rule, and exact resume through a training checkpoint.

Expected learning rates are worked out by hand from detectron2's definition
``lr * (f * (1 - t / W) + t / W if t < W else 1) * gamma ** #{s <= t}``, not computed by the code under test.
"""

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Parameter, Tensor, nn, ops

from src.checkpoint import load_for_resume, save_checkpoint
from src.engine.optim.sgd import (
    WarmupMultiStepSGD,
    build_param_groups,
    build_sgd,
    scale_schedule,
    warmup_multistep_factor,
)
from src.engine.train_step import TrainStep


def test_factor_at_chosen_iterations_of_the_coco_base_schedule():
    """warmup 1000 from 0.001, steps 85k / 100k, gamma 0.1 (DeFRCN COCO base)."""
    iters = [0, 500, 999, 1000, 84999, 85000, 99999, 100000, 109999]
    expected = [0.001, 0.5005, 0.999001, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    got = warmup_multistep_factor(iters, (85000, 100000), 0.1, 0.001, 1000, "linear")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_decay_inside_warmup_multiplies_instead_of_compounding():
    # t = 4 of a 5-iteration warmup from 0.001 after one decay at 3: (0.001 * 0.2 + 0.8) * 0.1.
    got = warmup_multistep_factor([2, 3, 4, 5], (3,), 0.1, 0.001, 5, "linear")
    np.testing.assert_allclose(got, [0.001 * 0.6 + 0.4, (0.001 * 0.4 + 0.6) * 0.1, 0.08002, 0.1], rtol=1e-12)
    np.testing.assert_allclose(warmup_multistep_factor([0, 4, 5], (), 0.1, 0.25, 5, "constant"), [0.25, 0.25, 1.0])
    with pytest.raises(ValueError, match="increasing"):
        warmup_multistep_factor(0, (5, 3))
    with pytest.raises(ValueError, match="warmup_method"):
        warmup_multistep_factor(0, (), warmup_method="cosine")


class _Params(nn.Cell):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(Tensor(np.zeros(3, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(2, np.float32)), name="bias")
        self.frozen = Parameter(Tensor(np.zeros(1, np.float32)), name="frozen", requires_grad=False)


def test_in_graph_lr_per_iteration_and_bias_group():
    """Momentum 0, no decay and unit gradients: each update moves a parameter by exactly -lr_t."""
    net = _Params()
    groups = build_param_groups(net, base_lr=0.1, weight_decay=0.0, weight_decay_bias=0.0, bias_lr_factor=2.0)
    assert [[p.name for p in g["params"]] for g in groups] == [["weight"], ["bias"]]
    opt = WarmupMultiStepSGD(groups, momentum=0.0, steps=(6, 9), gamma=0.5, warmup_factor=0.1, warmup_iters=4)
    grads = (Tensor(np.ones(3, np.float32)), Tensor(np.ones(2, np.float32)))
    # warmup 0.1 -> 1 over 4 iterations: 0.1, 0.325, 0.55, 0.775; then 1, 1; x0.5 from 6; x0.25 from 9.
    expected = [0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025]
    deltas, bias_deltas, host = [], [], []
    for _ in expected:
        before_w, before_b = net.weight.asnumpy().copy(), net.bias.asnumpy().copy()
        host.append(opt.current_lr(0))
        opt(grads)
        deltas.append(float((before_w - net.weight.asnumpy())[0]))
        bias_deltas.append(float((before_b - net.bias.asnumpy())[0]))
    np.testing.assert_allclose(deltas, expected, rtol=1e-5)
    np.testing.assert_allclose(bias_deltas, 2 * np.asarray(expected), rtol=1e-5)
    np.testing.assert_allclose(host, expected, rtol=1e-12)
    assert int(opt.state_step.asnumpy()) == len(expected)
    assert "frozen" not in {p.name for p in opt.parameters}


def test_sgd_matches_torch_with_weight_decay_groups_and_schedule():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)
    grads = [(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32))
             for _ in range(7)]
    steps, warmup, factor = (3, 5), 2, 0.001

    tw, tb = torch.nn.Parameter(torch.from_numpy(w0.copy())), torch.nn.Parameter(torch.from_numpy(b0.copy()))
    topt = torch.optim.SGD([{"params": [tw], "lr": 0.02, "weight_decay": 5e-5},
                            {"params": [tb], "lr": 0.02, "weight_decay": 1e-4}], lr=0.02, momentum=0.9)

    def hand(t):
        warm = factor * (1 - t / warmup) + t / warmup if t < warmup else 1.0
        return warm * 0.1 ** sum(t >= s for s in steps)

    sched = torch.optim.lr_scheduler.LambdaLR(topt, hand)
    for gw, gb in grads:
        tw.grad, tb.grad = torch.from_numpy(gw), torch.from_numpy(gb)
        topt.step()
        sched.step()

    net = nn.Cell()
    net.weight = Parameter(Tensor(w0.copy()), name="weight")
    net.bias = Parameter(Tensor(b0.copy()), name="bias")
    opt = WarmupMultiStepSGD(build_param_groups(net, 0.02, 5e-5, 1e-4), momentum=0.9, steps=steps,
                             warmup_factor=factor, warmup_iters=warmup)
    for gw, gb in grads:
        opt((Tensor(gw), Tensor(gb)))
    np.testing.assert_allclose(net.weight.asnumpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.bias.asnumpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-7)


TRAIN = {"base_lr": 0.02, "max_iter": 110000, "steps": [85000, 100000], "warmup_iters": 1000,
         "checkpoint_period": 5000, "ims_per_batch": 16, "auto_scale": True}


def test_linear_scaling_rule():
    one_gpu = scale_schedule(TRAIN, total_batch=2)  # 16 / 2 = 8x more iterations at 1/8 of the lr
    assert one_gpu.scale == 0.125 and one_gpu.base_lr == pytest.approx(0.0025)
    assert (one_gpu.max_iter, one_gpu.steps, one_gpu.warmup_iters, one_gpu.checkpoint_period) == \
        (880000, (680000, 800000), 8000, 40000)
    same = scale_schedule(TRAIN, total_batch=16)
    assert (same.base_lr, same.max_iter, same.steps, same.warmup_iters) == (0.02, 110000, (85000, 100000), 1000)
    # 3-shot COCO fine-tuning on 4 x 2 images: 2000 / 1600 iterations double, lr halves.
    ft = scale_schedule({**TRAIN, "base_lr": 0.01, "max_iter": 2000, "steps": [1600], "warmup_iters": 0}, 8)
    assert (ft.base_lr, ft.max_iter, ft.steps, ft.warmup_iters) == (0.005, 4000, (3200,), 0)
    off = scale_schedule({**TRAIN, "auto_scale": False}, total_batch=2)
    assert (off.base_lr, off.max_iter, off.scale) == (0.02, 110000, 1.0)
    with pytest.raises(ValueError, match="max_iter"):
        scale_schedule({**TRAIN, "steps": [120000]}, 16)


class _TinyLossNet(nn.Cell):
    """(image, mask, boxes, labels, valid) -> (loss, terms[2]), the DeFRCN loss-network contract."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, pad_mode="pad", padding=1, has_bias=True)
        self.head = nn.Dense(4, 4)

    def construct(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        keep = 1.0 - mask.astype(ms.float32).expand_dims(1)
        pooled = (ops.relu(self.conv(image)) * keep).mean(axis=(2, 3))
        pred = self.head(pooled)
        valid = tgt_valid.astype(ms.float32)
        reg = (ops.abs(pred.expand_dims(1) - tgt_boxes).sum(-1) * valid).sum() / ops.maximum(valid.sum(), 1.0)
        cls = (pred.sum(-1) - tgt_labels.astype(ms.float32).mean()) ** 2
        terms = ops.stack([reg, cls.mean()])
        return terms.sum(), terms


def _batch(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((2, 8, 8), bool)
    mask[1, 6:] = True
    return (Tensor(rng.normal(size=(2, 3, 8, 8)).astype(np.float32)), Tensor(mask),
            Tensor(rng.uniform(size=(2, 3, 4)).astype(np.float32)), Tensor(np.array([[1, 2, 0], [3, 0, 0]], np.int32)),
            Tensor(np.array([[True, True, False], [True, False, False]])))


def _make(seed=0):
    ms.set_seed(seed)
    net = _TinyLossNet()
    cfg = {"momentum": 0.9, "weight_decay": 5e-5, "weight_decay_bias": 1e-4, "bias_lr_factor": 1.0, "gamma": 0.1,
           "warmup_factor": 0.001, "warmup_method": "linear"}
    schedule = scale_schedule({**TRAIN, "max_iter": 10, "steps": [4, 7], "warmup_iters": 3}, 16)
    opt = build_sgd(net, cfg, schedule)
    step = TrainStep(net, opt)
    step.set_train(True)
    return net, opt, step


def test_train_step_with_loss_network_resumes_the_schedule_exactly(tmp_path):
    batches = [_batch(i) for i in range(8)]
    net, opt, step = _make()
    for i, batch in enumerate(batches):
        loss, terms, grad_norm = step(*batch)
        assert terms.shape == (2,) and np.isfinite(float(loss.asnumpy())) and float(grad_norm.asnumpy()) > 0
        if i == 4:
            ckpt = save_checkpoint(tmp_path / "tiny-0_5.ckpt", net, opt, epoch=0, step=5)
    reference = {p.name: p.asnumpy().copy() for p in net.get_parameters()}

    net2, opt2, step2 = _make(seed=1)  # different init: everything must come from the checkpoint
    assert load_for_resume(ckpt, net2, opt2) == (0, 5)
    assert int(opt2.state_step.asnumpy()) == 5 and opt2.current_lr() == pytest.approx(0.02 * 0.1)
    for batch in batches[5:]:
        step2(*batch)
    for name, value in reference.items():
        np.testing.assert_array_equal(dict((p.name, p.asnumpy()) for p in net2.get_parameters())[name], value,
                                      err_msg=name)
