"""Tests for the training engine: train step, clipping, AdamW parity with torch, LR schedule, checkpoints.

The real DETR model and criterion are tested elsewhere; here a tiny stand-in with DETR's interface
(``(image, mask) -> ([L,B,Q,C+1], [L,B,Q,4])`` and ``criterion(...) -> (loss, terms[3])``) keeps the tests
fast while exercising the same graph-mode code path.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn, ops

from src import checkpoint as ckpt_mod
from src.checkpoint import (
    checkpoint_path,
    load_for_resume,
    load_pretrained,
    save_checkpoint,
)
from src.engine.optim.adamw import DetrAdamW, build_optimizer, split_param_groups, step_lr
from src.engine.train_step import TrainStep
from src.models.contract import NetWithCriterion

NUM_CLASSES = 5
NUM_QUERIES = 4
DEC_LAYERS = 2
MAX_BOXES = 3
TRAIN_CFG = {"lr": 1e-3, "lr_backbone": 1e-4, "weight_decay": 1e-4, "lr_drop": 2}


class TinyDetector(nn.Cell):
    """Stand-in for DETR: conv 'backbone' + pooled features -> per-layer class logits and sigmoid boxes."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)
        self.class_embed = nn.Dense(8, DEC_LAYERS * NUM_QUERIES * (NUM_CLASSES + 1))
        self.bbox_embed = nn.Dense(8, DEC_LAYERS * NUM_QUERIES * 4)
        # A frozen parameter must never reach the optimizer but must be checkpointed.
        self.frozen_scale = ms.Parameter(ms.Tensor(np.ones(8, np.float32)), requires_grad=False)

    def construct(self, image, mask):
        feat = ops.relu(self.backbone(image))  # [B, 8, H/2, W/2]
        keep = 1.0 - ops.cast(mask[:, ::2, ::2], ms.float32)  # [B, H/2, W/2]
        pooled = (feat * keep[:, None]).sum(axis=(2, 3)) / ops.clamp(keep.sum(axis=(1, 2)), 1.0)[:, None]
        pooled = pooled * self.frozen_scale  # [B, 8]
        batch = image.shape[0]
        logits = self.class_embed(pooled).reshape(batch, DEC_LAYERS, NUM_QUERIES, NUM_CLASSES + 1)
        boxes = ops.sigmoid(self.bbox_embed(pooled)).reshape(batch, DEC_LAYERS, NUM_QUERIES, 4)
        return logits.transpose(1, 0, 2, 3), boxes.transpose(1, 0, 2, 3)  # [L, B, Q, *]


class TinyCriterion(nn.Cell):
    """Stand-in loss: query i predicts target i (no matching), CE + L1 over valid rows, all layers."""

    def construct(self, pred_logits, pred_boxes, tgt_boxes, tgt_labels, tgt_valid):
        valid = ops.cast(tgt_valid, ms.float32)  # [B, N]
        logits = pred_logits[:, :, :MAX_BOXES]  # [L, B, N, C+1]
        labels = ops.clamp(tgt_labels, 0, NUM_CLASSES)
        log_prob = ops.log_softmax(logits, -1)
        picked = ops.gather_elements(log_prob, 3, ops.broadcast_to(labels[None, :, :, None], (DEC_LAYERS, -1, -1, 1)))
        loss_ce = -(picked.squeeze(-1) * valid).sum(axis=(1, 2)) / ops.clamp(valid.sum(), 1.0)  # [L]
        l1 = ops.abs(pred_boxes[:, :, :MAX_BOXES] - tgt_boxes).sum(-1)  # [L, B, N]
        loss_bbox = (l1 * valid).sum(axis=(1, 2)) / ops.clamp(valid.sum(), 1.0)  # [L]
        loss = (loss_ce + 5.0 * loss_bbox).sum()
        terms = ops.stack([loss_ce[-1], loss_bbox[-1], ops.zeros((), ms.float32)])
        return loss, terms


def make_batch(seed=0, batch=2, size=16):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    mask = np.zeros((batch, size, size), bool)
    mask[1::2, :, size // 2 :] = True
    boxes = rng.uniform(0.2, 0.6, (batch, MAX_BOXES, 4)).astype(np.float32)
    labels = rng.integers(1, NUM_CLASSES + 1, (batch, MAX_BOXES)).astype(np.int32)
    # Every pair of images holds 3 valid boxes, so per-rank mean losses average to the full-batch loss.
    valid = np.tile(np.array([[True, True, False], [True, False, False]]), (batch // 2, 1))
    boxes[~valid] = 0
    labels[~valid] = 0
    return tuple(ms.Tensor(x) for x in (image, mask, boxes, labels, valid))


def make_net(seed):
    ms.set_seed(seed)
    return TinyDetector()


def params_np(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def make_train_step(net, clip=0.1, loss_scaler=None, steps_per_epoch=2, train_cfg=None):
    opt = build_optimizer(net, train_cfg or TRAIN_CFG, steps_per_epoch)
    return TrainStep(NetWithCriterion(net, TinyCriterion()), opt, clip_max_norm=clip, loss_scaler=loss_scaler), opt


def test_train_step_reduces_loss_in_graph_mode():
    net = make_net(0)
    step, _ = make_train_step(net, clip=0.0, train_cfg={**TRAIN_CFG, "lr": 3e-2, "lr_drop": 100})
    step.set_train()
    batch = make_batch()
    losses = [float(step(*batch)[0].asnumpy()) for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_step_outputs_and_frozen_param_untouched():
    net = make_net(1)
    step, opt = make_train_step(net)
    frozen_before = net.frozen_scale.asnumpy().copy()
    loss, terms, grad_norm = step(*make_batch())
    assert loss.shape == () and terms.shape == (3,) and grad_norm.shape == ()
    assert np.isfinite(loss.asnumpy()) and float(grad_norm.asnumpy()) > 0
    np.testing.assert_array_equal(net.frozen_scale.asnumpy(), frozen_before)
    assert all(p.requires_grad for p in opt.parameters)
    assert "frozen_scale" not in {p.name for p in opt.parameters}


def _grads_of(net, batch):
    net_with_loss = lambda *x: TinyCriterion()(*net(*x[:2]), *x[2:])[0]  # noqa: E731
    opt_params = split_param_groups(net)[1] + split_param_groups(net)[0]
    grad_fn = ms.value_and_grad(net_with_loss, None, ms.ParameterTuple(opt_params))
    _, grads = grad_fn(*batch)
    return [g.asnumpy() for g in grads], opt_params


@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_clipping_matches_clip_by_global_norm_definition(clip):
    """Train step with clipping == manual AdamW step on grads * clip / max(||g||, clip)."""
    batch = make_batch(3)
    net = make_net(2)
    grads, opt_params = _grads_of(net, batch)
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    coef = clip / max(norm, clip)
    clipped_ref = [g * coef for g in grads]
    clipped_ms = ops.clip_by_global_norm(tuple(ms.Tensor(g) for g in grads), clip)
    for ref, got in zip(clipped_ref, clipped_ms):
        np.testing.assert_allclose(got.asnumpy(), ref, rtol=1e-5, atol=1e-9)

    # Reference: the same optimizer fed the pre-clipped gradients directly.
    ref_net = make_net(2)
    ref_opt = build_optimizer(ref_net, TRAIN_CFG, 2)
    ref_opt(tuple(ms.Tensor(g.astype(np.float32)) for g in clipped_ref))

    step, _ = make_train_step(net, clip=clip)
    _, _, grad_norm = step(*batch)
    np.testing.assert_allclose(float(grad_norm.asnumpy()), norm, rtol=1e-5)
    got, ref = params_np(net), params_np(ref_net)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert (coef < 1) == (clip < norm)


def test_loss_scaler_static_matches_unscaled_and_dynamic_skips_overflow():
    batch = make_batch(4)
    plain_net, scaled_net = make_net(5), make_net(5)
    plain, _ = make_train_step(plain_net)
    scaled, _ = make_train_step(scaled_net, loss_scaler=ms.amp.StaticLossScaler(1024.0))
    plain(*batch)
    scaled(*batch)
    for name, value in params_np(plain_net).items():
        np.testing.assert_allclose(params_np(scaled_net)[name], value, rtol=1e-5, atol=1e-7)

    # An absurd scale overflows fp32 gradients: the update is skipped and the scale shrinks.
    net = make_net(6)
    scaler = ms.amp.DynamicLossScaler(scale_value=2.0**127 * 1.5, scale_factor=2, scale_window=10)
    step, opt = make_train_step(net, loss_scaler=scaler)
    before = params_np(net)
    step(*batch)
    assert float(scaler.scale_value.asnumpy()) < 2.0**127
    assert int(opt.state_step.asnumpy()) == 0
    for name, value in params_np(net).items():
        np.testing.assert_array_equal(value, before[name])


def test_adamw_matches_torch_two_groups_with_lr_drop():
    """DetrAdamW == torch.optim.AdamW + StepLR (per-step drop) on the same params and grads."""
    rng = np.random.default_rng(7)
    shapes = {"backbone.conv.weight": (4, 3), "head.weight": (5, 4), "head.bias": (5,)}
    init = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    ms_params = {name: ms.Parameter(ms.Tensor(v), name=name) for name, v in init.items()}
    t_params = {name: torch.nn.Parameter(torch.tensor(v)) for name, v in init.items()}
    order = ["head.weight", "head.bias", "backbone.conv.weight"]
    groups = [([n for n in order if not n.startswith("backbone.")], 1e-2), (["backbone.conv.weight"], 1e-3)]
    opt = DetrAdamW(
        [{"params": [ms_params[n] for n in names], "lr": lr} for names, lr in groups],
        drop_step=2,
        weight_decay=0.05,
    )
    t_opt = torch.optim.AdamW(
        [{"params": [t_params[n] for n in names], "lr": lr} for names, lr in groups], weight_decay=0.05
    )
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, step_size=2, gamma=0.1)

    @ms.jit
    def jit_step(grads):
        return opt(grads)

    for _ in range(3):
        grads = {name: rng.standard_normal(shapes[name]).astype(np.float32) for name in order}
        jit_step(tuple(ms.Tensor(grads[n]) for n in order))
        for name in order:
            t_params[name].grad = torch.tensor(grads[name])
        t_opt.step()
        t_sched.step()
        for name in order:
            np.testing.assert_allclose(
                ms_params[name].asnumpy(), t_params[name].detach().numpy(), rtol=0, atol=1e-6, err_msg=name
            )
    assert int(opt.state_step.asnumpy()) == 3
    np.testing.assert_allclose(opt.lrs[0].asnumpy(), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(opt.current_lr(), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(opt.current_lr(1), 1e-4, rtol=1e-6)


def test_nn_adamweightdecay_differs_from_torch_first_step():
    """Documents why nn.AdamWeightDecay was not chosen: no bias correction, so step 1 differs from torch."""
    w0 = np.array([1.0, -2.0, 3.0], np.float32)
    grad = np.array([0.5, 0.1, -0.3], np.float32)
    param = ms.Parameter(ms.Tensor(w0), name="w")
    nn.AdamWeightDecay([param], learning_rate=0.1, eps=1e-8, weight_decay=0.0)((ms.Tensor(grad),))
    t_param = torch.nn.Parameter(torch.tensor(w0))
    t_param.grad = torch.tensor(grad)
    torch.optim.AdamW([t_param], lr=0.1, weight_decay=0.0).step()
    assert np.abs(param.asnumpy() - t_param.detach().numpy()).max() > 1e-2


def test_step_lr_and_build_optimizer_groups():
    np.testing.assert_allclose(step_lr(1e-4, np.arange(6), drop_step=4), [1e-4] * 4 + [1e-5] * 2)
    np.testing.assert_allclose(step_lr(1e-4, np.arange(3), drop_step=0), [1e-4] * 3)
    net = make_net(0)
    opt = build_optimizer(net, TRAIN_CFG, steps_per_epoch=3)
    assert opt.drop_step == TRAIN_CFG["lr_drop"] * 3
    backbone_names = {p.name for p in opt.param_groups[1]["params"]}
    other_names = {p.name for p in opt.param_groups[0]["params"]}
    assert backbone_names == {"backbone.weight", "backbone.bias"}
    assert other_names == {p.name for p in net.trainable_params()} - backbone_names
    np.testing.assert_allclose([float(lr.asnumpy()) for lr in opt.lrs], [1e-3, 1e-4], rtol=1e-6)
    frozen_backbone = build_optimizer(net, {**TRAIN_CFG, "lr_backbone": 0.0}, steps_per_epoch=3)
    assert len(frozen_backbone.param_groups) == 1
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_optimizer(net, TRAIN_CFG, steps_per_epoch=0)


def test_checkpoint_round_trip_and_resume_continues_identically(tmp_path):
    batches = [make_batch(10), make_batch(11)]
    # steps_per_epoch=1 and lr_drop=2 put the LR drop between the steps, so the schedule state is tested.
    straight_net = make_net(20)
    straight, _ = make_train_step(straight_net, steps_per_epoch=1)
    for batch in batches:
        straight(*batch)

    first_net = make_net(20)
    first, first_opt = make_train_step(first_net, steps_per_epoch=1)
    first(*batches[0])
    path = save_checkpoint(checkpoint_path(tmp_path, "detr", 1, 1), first_net, first_opt, epoch=1, step=1,
                           extra={"best_ap": 0.25, "note": "tiny"})
    saved_net, saved_opt = params_np(first_net), params_np(first_opt)

    fresh_net = make_net(99)
    fresh, fresh_opt = make_train_step(fresh_net, steps_per_epoch=1)
    epoch, step = load_for_resume(path, fresh_net, fresh_opt)
    assert (epoch, step) == (1, 1)
    for name, value in params_np(fresh_net).items():
        np.testing.assert_array_equal(value, saved_net[name], err_msg=name)
    restored_opt = params_np(fresh_opt)
    stored = set(ckpt_mod.checkpoint_arrays(path))
    assert {p.name for p in first_net.get_parameters()} | {"state_step"} <= stored
    assert {f"{m}.{p.name}" for m in ("exp_avg", "exp_avg_sq") for p in first_opt.parameters} <= stored
    assert not any(name.startswith("max_exp_avg_sq.") for name in stored)
    for name, value in saved_opt.items():
        np.testing.assert_array_equal(restored_opt[name], value, err_msg=name)
    assert int(fresh_opt.state_step.asnumpy()) == 1

    fresh(*batches[1])
    straight_params = params_np(straight_net)
    for name, value in params_np(fresh_net).items():
        np.testing.assert_array_equal(value, straight_params[name], err_msg=name)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    net = make_net(0)
    opt = build_optimizer(net, TRAIN_CFG, 2)
    good = save_checkpoint(tmp_path / "detr-1_2.ckpt", net, opt, epoch=1, step=2)
    good_bytes = good.read_bytes()
    real_save = ms.save_checkpoint

    def save_then_crash(save_obj, ckpt_file_name, **kwargs):
        real_save(save_obj[:1], ckpt_file_name, **kwargs)  # a partial file exists on disk
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.ms, "save_checkpoint", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(good, net, opt, epoch=2, step=4)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "detr-2_4.ckpt", net, opt, epoch=2, step=4)
    assert sorted(os.listdir(tmp_path)) == ["detr-1_2.ckpt"]
    assert good.read_bytes() == good_bytes


def test_keep_checkpoint_max_rotation(tmp_path):
    net = make_net(0)
    for epoch in (1, 2, 10, 11):
        save_checkpoint(checkpoint_path(tmp_path, "detr", epoch, epoch * 5), net, epoch=epoch,
                        step=epoch * 5, keep_checkpoint_max=2)
    (tmp_path / "other-1_1.ckpt").write_bytes(b"")
    save_checkpoint(checkpoint_path(tmp_path, "detr", 12, 60), net, epoch=12, step=60, keep_checkpoint_max=2)
    assert sorted(os.listdir(tmp_path)) == ["detr-11_55.ckpt", "detr-12_60.ckpt", "other-1_1.ckpt"]
    with pytest.raises(ValueError, match="<prefix>-<epoch>_<step>"):
        save_checkpoint(tmp_path / "final.ckpt", net, keep_checkpoint_max=2)


def test_load_pretrained_reports_keys_and_shapes(tmp_path):
    src_net = make_net(3)
    opt = build_optimizer(src_net, TRAIN_CFG, 2)
    path = save_checkpoint(tmp_path / "train.ckpt", src_net, opt, epoch=4, step=8, extra={"best_ap": 0.5})
    dst = make_net(4)
    assert load_pretrained(path, dst) == ([], [])
    for name, value in params_np(src_net).items():
        np.testing.assert_array_equal(params_np(dst)[name], value)

    weights = [{"name": p.name, "data": p} for p in src_net.get_parameters() if p.name != "bbox_embed.bias"]
    weights.append({"name": "extra_head.weight", "data": ms.Tensor(np.zeros(2, np.float32))})
    partial = tmp_path / "partial.ckpt"
    ms.save_checkpoint(weights, str(partial))
    with pytest.raises(KeyError, match=r"bbox_embed\.bias.*extra_head\.weight"):
        load_pretrained(partial, make_net(5))
    assert load_pretrained(partial, make_net(5), strict=False) == (["bbox_embed.bias"], ["extra_head.weight"])

    wrong = [{"name": p.name, "data": p} for p in src_net.get_parameters() if p.name != "class_embed.weight"]
    wrong.append({"name": "class_embed.weight", "data": ms.Tensor(np.zeros((3, 8), np.float32))})
    mismatched = tmp_path / "mismatched.ckpt"
    ms.save_checkpoint(wrong, str(mismatched))
    rows = DEC_LAYERS * NUM_QUERIES * (NUM_CLASSES + 1)
    expected = rf"'class_embed\.weight': checkpoint \(3, 8\) vs model \({rows}, 8\)"
    with pytest.raises(ValueError, match=expected):
        load_pretrained(mismatched, make_net(6), strict=False)
    with pytest.raises(KeyError, match="missing"):
        load_for_resume(partial, make_net(5), None)


DP_WORKER = """
import sys
import numpy as np
import mindspore as ms
from mindspore.communication import get_rank
from src.runtime import init_context
init_context("CPU", distributed=True)
from tests.test_engine import make_batch, make_net, make_train_step
rank = get_rank()
net = make_net(30)
step, _ = make_train_step(net, clip=0.05)
for seed in (0, 1):
    full = make_batch(seed, batch=4)
    _, _, grad_norm = step(*(ms.Tensor(x.asnumpy()[2 * rank : 2 * rank + 2]) for x in full))
np.savez(sys.argv[1] + f"/rank{rank}.npz", grad_norm=grad_norm.asnumpy(),
         **{p.name: p.asnumpy() for p in net.get_parameters()})
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_data_parallel_step_matches_single_process_full_batch(tmp_path):
    """msrun, 2 CPU ranks, half a batch each: gradients are all-reduced before clipping, so both ranks end
    with the single-process full-batch parameters and report the same (full-batch) grad norm."""
    worker = tmp_path / "dp_worker.py"
    worker.write_text(DP_WORKER)
    repo_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [
        str(Path(sys.executable).parent / "msrun"), "--worker_num", "2", "--local_worker_num", "2",
        "--master_port", str(_free_port()), "--join", "True", "--log_dir", str(tmp_path / "logs"),
        str(worker), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text()[-3000:] for p in sorted((tmp_path / "logs").glob("worker_*.log")))
    assert proc.returncode == 0, logs

    net = make_net(30)
    step, _ = make_train_step(net, clip=0.05)
    for seed in (0, 1):
        _, _, grad_norm = step(*make_batch(seed, batch=4))
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_allclose(got["grad_norm"], grad_norm.asnumpy(), rtol=1e-5)
        for name, value in params_np(net).items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=f"rank {rank} {name}")
