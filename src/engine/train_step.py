"""Graph-mode training step: one forward, gradients, all-reduce, loss-scale check, clipping, update.

Follows facebookresearch/detr engine.py ``train_one_epoch``: loss = weighted criterion sum, backward,
``clip_grad_norm_(model.parameters(), max_norm)`` when ``max_norm > 0``, ``optimizer.step()``. Differences
that matter for a MindSpore port:

* The clip happens after the data-parallel gradient all-reduce, so every rank clips the same averaged
  gradient by the same global norm and ranks stay in sync (torch DDP also all-reduces during backward,
  before the clip).
* The clip coefficient is ``clip_max_norm / max(norm, clip_max_norm)`` (``ops.clip_by_global_norm``'s
  definition, which is deprecated after MindSpore 2.9 and therefore re-implemented here); torch uses
  ``clip_max_norm / (norm + 1e-6)`` clamped to 1, a relative difference below 1e-6 / norm.
* With a loss scaler (AMP), the update and the scale adjustment are skipped/applied from the all-finite
  check of the unscaled, all-reduced gradients.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.amp import DynamicLossScaler, StaticLossScaler, all_finite
from mindspore.communication import get_group_size
from mindspore.context import ParallelMode

_grad_square_sum = ops.MultitypeFuncGraph("grad_square_sum")
_grad_mul = ops.MultitypeFuncGraph("grad_mul")


@_grad_square_sum.register("Tensor")
def _square_sum(grad):
    return ops.reduce_sum(ops.square(grad.astype(ms.float32)))


@_grad_mul.register("Tensor", "Tensor")
def _mul(coef, grad):
    return grad * coef.astype(grad.dtype)


def global_norm(grads):
    """L2 norm of all gradients taken as one vector (float32 scalar)."""
    return ops.sqrt(ops.addn(ops.HyperMap()(_grad_square_sum, grads)))


def clip_grads_by_global_norm(grads, max_norm: float, norm):
    """Scale ``grads`` by ``max_norm / max(norm, max_norm)`` (no-op when the norm is already small).

    Args:
        grads: tuple of gradient Tensors.
        max_norm: python float > 0.
        norm: float32 scalar Tensor, the global norm of ``grads``.

    Returns:
        tuple of clipped gradients, same dtypes as ``grads``.
    """
    coef = max_norm / ops.maximum(norm, ops.full((), max_norm, dtype=ms.float32))
    return ops.HyperMap()(ops.partial(_grad_mul, coef), grads)


class TrainStep(nn.Cell):
    """One optimizer step of detector training (DETR family, DeFRCN), compiled as a single graph.

    Args:
        train_network: the model's training Cell ``(image, mask, tgt_boxes, tgt_labels, tgt_valid) -> (loss,
            loss_terms)`` (``build_model(cfg).train_network``, :mod:`src.models.contract`).
        optimizer: optimizer Cell taking a tuple of gradients ordered like ``optimizer.parameters``.
        clip_max_norm: global-norm clip threshold; 0 (or less) disables clipping.
        loss_scaler: None (fp32 training), ``mindspore.amp.StaticLossScaler`` or ``DynamicLossScaler``.

    Inputs:
        image, mask, tgt_boxes, tgt_labels, tgt_valid as :class:`src.models.contract.NetWithCriterion`.

    Outputs:
        loss float32 scalar (unscaled), loss_terms float32 [T] (the model's logging terms, DETR: 3, DeFRCN: 4),
        grad_norm float32 scalar (global norm of the all-reduced, unscaled gradients BEFORE clipping, like
        torch's ``clip_grad_norm_`` return).

    Raises:
        TypeError: if ``loss_scaler`` is not None or a MindSpore static/dynamic loss scaler.
    """

    def __init__(self, train_network, optimizer, clip_max_norm: float = 0.0, loss_scaler=None):
        super().__init__(auto_prefix=False)
        if loss_scaler is not None and not isinstance(loss_scaler, (StaticLossScaler, DynamicLossScaler)):
            raise TypeError(
                f"loss_scaler must be None, mindspore.amp.StaticLossScaler or DynamicLossScaler, "
                f"got {type(loss_scaler).__name__}."
            )
        self.train_network = train_network
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.clip_max_norm = float(clip_max_norm)
        self.loss_scaler = loss_scaler
        self.use_loss_scale = loss_scaler is not None
        self.grad_fn = ms.value_and_grad(self._scaled_forward, None, self.weights, has_aux=True)
        self.grad_reducer = self._build_grad_reducer()
        self.reduce_grads = not isinstance(self.grad_reducer, nn.Identity)

    def _build_grad_reducer(self):
        """DistributedGradReducer in data/hybrid parallel mode, identity otherwise."""
        parallel_mode = ms.get_auto_parallel_context("parallel_mode")
        if parallel_mode not in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
            return nn.Identity()
        mean = ms.get_auto_parallel_context("gradients_mean")
        return nn.DistributedGradReducer(self.weights, mean, get_group_size())

    def _scaled_forward(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        loss, loss_terms = self.train_network(image, mask, tgt_boxes, tgt_labels, tgt_valid)
        scaled = self.loss_scaler.scale(loss) if self.use_loss_scale else loss
        return scaled, loss, loss_terms

    def construct(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        (_, loss, loss_terms), grads = self.grad_fn(image, mask, tgt_boxes, tgt_labels, tgt_valid)
        if self.reduce_grads:
            grads = self.grad_reducer(grads)
        if self.use_loss_scale:
            grads = self.loss_scaler.unscale(grads)
        grad_norm = global_norm(grads)
        if self.clip_max_norm > 0:
            grads = clip_grads_by_global_norm(grads, self.clip_max_norm, grad_norm)
        if self.use_loss_scale:
            finite = all_finite(grads)
            self.loss_scaler.adjust(finite)
            if finite:
                loss = ops.depend(loss, self.optimizer(grads))
        else:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, loss_terms, grad_norm
