"""detectron2's solver for DeFRCN: SGD with momentum, per-group lr / weight decay, WarmupMultiStepLR in-graph.

Follows facebookresearch/detectron2 v0.3 as er-muyue/DeFRCN runs it (``defrcn/solver/build.py`` and
``lr_scheduler.py``):

* Parameter groups (``build_optimizer``): every trainable parameter trains at ``BASE_LR`` with
  ``WEIGHT_DECAY``, except parameters named ``bias``, which use ``BASE_LR * BIAS_LR_FACTOR`` and
  ``WEIGHT_DECAY_BIAS``. In detectron2 v0.3 ``WEIGHT_DECAY_BIAS`` is bound to the default ``WEIGHT_DECAY``
  (1e-4) when the defaults are built, and DeFRCN only overrides ``WEIGHT_DECAY`` (5e-5) afterwards, so
  DeFRCN's biases decay with 1e-4 and its weights with 5e-5 (``BIAS_LR_FACTOR`` 1). detectron2's
  ``WEIGHT_DECAY_NORM`` never applies: every normalization layer of DeFRCN is a FrozenBN without trainable
  parameters.
* Update (``torch.optim.SGD``, dampening 0, no Nesterov): ``buf = momentum * buf + (grad + wd * p)``,
  ``p -= lr * buf``. Run through the fused ``ops.ApplyMomentum`` kernel, whose update is exactly this.
* Schedule (``WarmupMultiStepLR``): at 0-based iteration ``t``,
  ``lr_t = lr * warmup(t) * gamma ** #{s in steps : s <= t}`` with the linear warmup
  ``warmup(t) = f * (1 - t / W) + t / W`` for ``t < W`` (``f = WARMUP_FACTOR`` 0.001, ``W = WARMUP_ITERS``)
  and 1 afterwards. The warmup factor and the step decay are multiplied, each computed from ``t`` alone
  (the earlier MindSpore port overwrote its warmup factor inside its loop and compounded it, and gave biases
  a constant lr).

Schedule placement: like :class:`src.engine.optim.adamw.DetrAdamW`, the lr is computed inside the optimizer's
graph from its own update counter ``state_step`` (saved in every checkpoint), so no per-step table is needed
and a resumed run continues the schedule exactly.

Linear scaling (:func:`scale_schedule`): DeFRCN's schedules assume 16 images per iteration (8 GPUs x 2).
With another total batch ``B`` the rule of detectron2's ``DefaultTrainer.auto_scale_workers`` (and the DeFRCN
author's advice for smaller batches, er-muyue/DeFRCN issue 19) is applied: ``scale = B / 16``, lr times
``scale``, and ``max_iter``, ``steps``, ``warmup_iters`` and the checkpoint period divided by ``scale``
(rounded), so the number of images seen and the lr per image stay the same. detectron2 keys this on the GPU
count (``REFERENCE_WORLD_SIZE``) with a fixed per-GPU batch; here it is keyed on the total batch itself,
which is the same rule whenever the per-device batch is the reference one and also covers a changed
per-device batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

_sgd_update = ops.MultitypeFuncGraph("sgd_update")


@_sgd_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _apply_sgd(kernel, lr, momentum, weight_decay, param, moment, grad):
    # Weight decay enters through the gradient, before the momentum buffer, as in torch.optim.SGD.
    return kernel(param, moment, lr, grad + weight_decay * param, momentum)


WARMUP_METHODS = ("linear", "constant")


def warmup_multistep_factor(step, steps: Sequence[int] = (), gamma: float = 0.1, warmup_factor: float = 0.001,
                            warmup_iters: int = 1000, warmup_method: str = "linear") -> np.ndarray:
    """detectron2 ``WarmupMultiStepLR`` factor (lr / base lr) at 0-based iteration(s) ``step``, in float64.

    Args:
        step: int or int array of 0-based iterations (the first update is iteration 0).
        steps: increasing iterations at which the lr is multiplied by ``gamma`` (``SOLVER.STEPS``).
        gamma: decay factor per passed step.
        warmup_factor: factor at iteration 0.
        warmup_iters: iterations of warmup; 0 disables it.
        warmup_method: ``linear`` (from ``warmup_factor`` to 1) or ``constant`` (``warmup_factor`` throughout).

    Returns:
        float64 array shaped like ``step``.

    Raises:
        ValueError: unknown warmup method or steps not increasing.
    """
    _check_schedule(steps, warmup_method)
    step = np.asarray(step, np.float64)
    if warmup_method == "linear":
        alpha = step / max(warmup_iters, 1)
        warm = warmup_factor * (1.0 - alpha) + alpha
    else:
        warm = np.full(step.shape, float(warmup_factor))
    warm = np.where(step < warmup_iters, warm, 1.0)
    decays = sum((step >= s).astype(np.float64) for s in steps) if steps else np.zeros(step.shape)
    return warm * float(gamma) ** decays


def _check_schedule(steps: Sequence[int], warmup_method: str) -> None:
    if warmup_method not in WARMUP_METHODS:
        raise ValueError(f"warmup_method must be one of {WARMUP_METHODS}, got {warmup_method!r}")
    if list(steps) != sorted(steps):
        raise ValueError(f"lr steps must be increasing iterations, got {list(steps)}")


class WarmupMultiStepSGD(nn.Cell):
    """torch-equivalent momentum SGD whose per-group lr follows detectron2's WarmupMultiStepLR in-graph.

    Args:
        param_groups: list of dicts ``{"params": [Parameter...], "lr": float, "weight_decay": float}``; empty
            groups are dropped.
        momentum: SGD momentum (0.9).
        steps, gamma, warmup_factor, warmup_iters, warmup_method: see :func:`warmup_multistep_factor`.

    Inputs:
        gradients (tuple[Tensor]): one gradient per parameter, in ``self.parameters`` order.

    Outputs:
        True (the updates are side effects on the parameters and ``momentum_buffer.*``).

    State (checkpointed by :mod:`src.checkpoint`): ``momentum_buffer.<param name>`` and ``state_step``
    (int32, updates applied so far, which is the 0-based iteration of the next update).

    Raises:
        ValueError: no trainable parameter, unknown warmup method or non-increasing steps.
    """

    def __init__(self, param_groups: Sequence[Mapping[str, Any]], momentum: float = 0.9, steps: Sequence[int] = (),
                 gamma: float = 0.1, warmup_factor: float = 0.001, warmup_iters: int = 1000,
                 warmup_method: str = "linear"):
        super().__init__(auto_prefix=False)
        _check_schedule(steps, warmup_method)
        groups = [dict(group) for group in param_groups if len(group["params"]) > 0]
        if not groups:
            raise ValueError("WarmupMultiStepSGD got no trainable parameters; check requires_grad on the network.")
        self.parameters = ParameterTuple([param for group in groups for param in group["params"]])
        self.moments = self.parameters.clone(prefix="momentum_buffer", init="zeros")
        self.state_step = Parameter(Tensor(0, ms.int32), name="state_step", requires_grad=False)
        self.base_lrs = tuple(float(group["lr"]) for group in groups)
        self.weight_decays = tuple(float(group["weight_decay"]) for group in groups)
        bounds = np.cumsum([0] + [len(group["params"]) for group in groups]).tolist()
        self.group_bounds = tuple(zip(bounds[:-1], bounds[1:]))
        self.momentum = Tensor(float(momentum), ms.float32)
        self.steps = tuple(int(s) for s in steps)
        self.gamma = float(gamma)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        self.apply_momentum = ops.ApplyMomentum()
        self.hyper_map = ops.HyperMap()
        self.one = Tensor(1.0, ms.float32)

    def lr_factor(self):
        """float32 scalar schedule factor of the update about to be applied (iteration ``state_step``)."""
        step = self.state_step.astype(ms.float32)
        factor = self.one
        if self.warmup_iters > 0:
            if self.warmup_method == "linear":
                alpha = step / float(self.warmup_iters)
                warm = self.warmup_factor * (1.0 - alpha) + alpha
            else:
                warm = self.one * self.warmup_factor
            factor = ops.select(step < float(self.warmup_iters), warm, self.one)
        for milestone in self.steps:
            factor = factor * ops.select(step >= float(milestone), self.one * self.gamma, self.one)
        return factor

    def current_lr(self, group_id: int = 0) -> float:
        """Host-side lr of group ``group_id`` for the next update (0: weights, 1: biases in DeFRCN's groups)."""
        step = int(self.state_step.asnumpy())
        return self.base_lrs[group_id] * float(warmup_multistep_factor(
            step, self.steps, self.gamma, self.warmup_factor, self.warmup_iters, self.warmup_method))

    def construct(self, gradients):
        factor = self.lr_factor()
        for group_id, (start, end) in enumerate(self.group_bounds):
            lr = factor * self.base_lrs[group_id]
            decay = Tensor(self.weight_decays[group_id], ms.float32)
            self.hyper_map(ops.partial(_sgd_update, self.apply_momentum, lr, self.momentum, decay),
                           self.parameters[start:end], self.moments[start:end], gradients[start:end])
        ops.assign_add(self.state_step, ops.ones((), ms.int32))
        return True


def build_param_groups(network: nn.Cell, base_lr: float, weight_decay: float, weight_decay_bias: float,
                       bias_lr_factor: float = 1.0) -> list[dict]:
    """detectron2 ``build_optimizer`` groups: [weights, biases], trainable parameters only, network order.

    A parameter is a bias when its own name (the last dotted component) is ``bias``, as detectron2 tests the
    module attribute name.
    """
    weights, biases = [], []
    for param in network.trainable_params():
        (biases if param.name.rsplit(".", 1)[-1] == "bias" else weights).append(param)
    return [{"params": weights, "lr": float(base_lr), "weight_decay": float(weight_decay)},
            {"params": biases, "lr": float(base_lr) * float(bias_lr_factor), "weight_decay": float(weight_decay_bias)}]


@dataclass(frozen=True)
class SolverSchedule:
    """Iteration schedule after the linear scaling rule (see :func:`scale_schedule`).

    Attributes:
        base_lr: lr after warmup, before any decay.
        max_iter: optimizer updates in total.
        steps: iterations at which the lr decays.
        warmup_iters: warmup length in iterations.
        checkpoint_period: iterations between checkpoints (0: only at the end).
        scale: actual total batch / reference total batch (1.0 when no scaling was applied).
    """

    base_lr: float
    max_iter: int
    steps: tuple
    warmup_iters: int
    checkpoint_period: int
    scale: float


def scale_schedule(train_cfg: Mapping[str, Any], total_batch: int) -> SolverSchedule:
    """The ``train`` section's schedule for ``total_batch`` images per update (all ranks together).

    Args:
        train_cfg: mapping with ``base_lr``, ``max_iter``, ``steps``, ``warmup_iters``, ``checkpoint_period``,
            ``ims_per_batch`` (the total batch the schedule was written for, DeFRCN 16) and ``auto_scale``.
        total_batch: per-device batch size times number of ranks.

    Returns:
        The schedule unchanged when ``auto_scale`` is false or ``total_batch == ims_per_batch``; otherwise
        lr times ``scale = total_batch / ims_per_batch`` and every iteration count divided by ``scale``, rounded
        as detectron2 ``auto_scale_workers`` does (at least 1 for ``max_iter``).

    Raises:
        ValueError: non-positive batch sizes, or steps beyond ``max_iter``.
    """
    reference = int(train_cfg["ims_per_batch"])
    if total_batch < 1 or reference < 1:
        raise ValueError(f"batch sizes must be positive: total batch {total_batch}, train.ims_per_batch {reference}")
    steps = tuple(int(s) for s in train_cfg["steps"])
    max_iter = int(train_cfg["max_iter"])
    if any(s > max_iter for s in steps):
        raise ValueError(f"train.steps {list(steps)} must not exceed train.max_iter {max_iter}")
    scale = total_batch / reference if train_cfg["auto_scale"] else 1.0
    return SolverSchedule(
        base_lr=float(train_cfg["base_lr"]) * scale,
        max_iter=max(int(round(max_iter / scale)), 1),
        steps=tuple(int(round(s / scale)) for s in steps),
        warmup_iters=int(round(int(train_cfg["warmup_iters"]) / scale)),
        checkpoint_period=int(round(int(train_cfg["checkpoint_period"]) / scale)),
        scale=scale,
    )


def build_sgd(network: nn.Cell, train_cfg: Mapping[str, Any], schedule: SolverSchedule) -> WarmupMultiStepSGD:
    """DeFRCN's optimizer from the ``train`` section and a (scaled) schedule.

    Args:
        network: the model; only ``trainable_params()`` are optimized.
        train_cfg: mapping with ``momentum``, ``weight_decay``, ``weight_decay_bias``, ``bias_lr_factor``,
            ``gamma``, ``warmup_factor``, ``warmup_method``.
        schedule: from :func:`scale_schedule`.
    """
    groups = build_param_groups(network, schedule.base_lr, train_cfg["weight_decay"], train_cfg["weight_decay_bias"],
                                train_cfg["bias_lr_factor"])
    return WarmupMultiStepSGD(groups, momentum=float(train_cfg["momentum"]), steps=schedule.steps,
                              gamma=float(train_cfg["gamma"]), warmup_factor=float(train_cfg["warmup_factor"]),
                              warmup_iters=schedule.warmup_iters, warmup_method=train_cfg["warmup_method"])
