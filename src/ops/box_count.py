"""The loss normalizer of the DETR family: how many real target boxes a batch holds, averaged over ranks.

Follows facebookresearch/detr ``models/detr.py::SetCriterion.forward``: ``num_boxes`` is the number of target
boxes in the batch, all-reduced and divided by the world size when distributed, and clamped to at least 1.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops


class BoxCount(nn.Cell):
    """``tgt_valid -> num_boxes``: valid target count of the batch (mean over ranks when distributed), at least 1.

    Args:
        distributed: average over the ranks of the default communication group (needs
            ``mindspore.communication.init()`` before construction).

    Inputs:
        tgt_valid (Tensor[bool]): ``[B, N]``, True on real (not padded) target rows.

    Outputs:
        float32 scalar Tensor.
    """

    def __init__(self, distributed: bool = False):
        super().__init__()
        self.distributed = bool(distributed)
        self.group_size = 1.0
        if self.distributed:
            from mindspore.communication import get_group_size

            self.group_size = float(get_group_size())
            self.all_reduce = ops.AllReduce()

    def construct(self, tgt_valid: Tensor) -> Tensor:
        count = tgt_valid.astype(ms.float32).sum()
        if self.distributed:
            count = self.all_reduce(count) / self.group_size
        return ops.maximum(count, 1.0)
