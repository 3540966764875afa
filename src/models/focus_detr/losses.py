"""Losses of Focus-DETR computed stably from logits.

- :func:`sigmoid_focal_loss`: the detection classification loss (Lin et al. 2017), as detrex
  ``detrex/modeling/losses/focal_loss.py::sigmoid_focal_loss`` with the DETR normalization (sum over queries and
  classes divided by the number of GT boxes).
- :func:`foreground_supervision_loss`: the FTS supervision of Focus-DETR (paper section 3.2; detrex
  ``projects/focus_detr/modeling/foreground_supervision.py::compute_cls_loss``), weighted by
  :data:`SELECT_LOSS_WEIGHT` in the criterion (``select_loss``).

Both use the binary-cross-entropy-with-logits form ``max(x, 0) - x*t + log(1 + exp(-|x|))`` for the log term;
the reference's foreground loss takes ``log(sigmoid(x))`` directly, which gives ``inf``/NaN once
``sigmoid`` saturates in float32 (|x| of a few tens).
"""

from mindspore import ops

SELECT_LOSS_WEIGHT = 1.5


def _focal_terms(logits, targets, alpha: float, gamma: float):
    """Element-wise focal loss ``alpha_t * (1 - p_t)^gamma * BCE(x, t)``; ``alpha < 0`` disables weighting."""
    prob = ops.sigmoid(logits)
    bce = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = bce * ops.pow(1.0 - p_t, gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss


def sigmoid_focal_loss(logits, targets, num_boxes, alpha: float = 0.25, gamma: float = 2.0, weights=None):
    """Sigmoid focal loss summed over every element and divided by the number of GT boxes.

    detrex computes ``loss.mean(1).sum() / num_boxes * num_queries``, which is the same value.

    Args:
        logits (Tensor[float32]): any shape, e.g. ``[B, Q, C]``.
        targets (Tensor[float32]): same shape, one-hot in {0, 1} (soft targets also work).
        num_boxes (Tensor[float32] or float): normalizer, already clamped >= 1 by the caller.
        alpha: positive-class weight (0.25); negative disables it.
        gamma: focusing exponent (2).
        weights (Tensor[float32] or None): same shape as ``logits``; multiplies each element's loss (0 leaves
            an element out, e.g. denoising slots outside the real groups).

    Returns:
        Tensor[float32]: scalar.
    """
    terms = _focal_terms(logits, targets, alpha, gamma)
    if weights is not None:
        terms = terms * weights
    return terms.sum() / num_boxes


def foreground_supervision_loss(logits, labels, alpha: float = 0.25, gamma: float = 2.0):
    """Focal loss of the FTS foreground logits against the FCOS-style token labels (unweighted).

    Per image: focal loss summed over all tokens (padding included, as the reference) divided by that image's
    number of foreground tokens (at least 1); then the mean over the batch.

    Args:
        logits (Tensor[float32]): ``[B, N]`` raw FTS logits (all levels).
        labels (Tensor[float32]): ``[B, N]`` in {0, 1}, from ``fts.fcos_foreground_labels``.
        alpha: focal alpha (0.25).
        gamma: focal gamma (2).

    Returns:
        Tensor[float32]: scalar; multiply by :data:`SELECT_LOSS_WEIGHT` for the total loss.
    """
    per_image = _focal_terms(logits, labels, alpha, gamma).sum(axis=1)
    num_pos = ops.maximum(labels.sum(axis=1), 1.0)
    return (per_image / num_pos).mean()
