"""Softmax over the last axis whose gradient uses only same-shape element-wise operands.

MindSpore 2.10's built-in Softmax gradient subtracts a ``[..., 1]`` row sum from a ``[..., N]`` tensor with a
broadcasting ``Sub``; on CPU that kernel keeps two ``size_t`` index tables of the output's size for the life of a
compiled graph (16 bytes per element, 185 MB for each ``[2, 8, 850, 850]`` encoder self-attention of DETR-R50 at
800x1066, benchmarks/README.md). This Cell computes the same textbook gradient
``dx = y * (dy - sum(dy * y, -1))`` with the row sum broadcast to the full shape first.
"""

from mindspore import nn, ops


class LastAxisSoftmax(nn.Cell):
    """``ops.softmax(x, axis=-1)`` with a hand-written ``bprop`` (same values, same gradient).

    Inputs:
        x (Tensor[float32]): any shape ``[..., N]``.

    Outputs:
        Tensor[float32]: same shape, softmax over the last axis.
    """

    def construct(self, x):
        return ops.softmax(x, axis=-1)

    def bprop(self, x, out, dout):
        row = ops.ReduceSum(keep_dims=True)(dout * out, -1)
        return (out * (dout - ops.BroadcastTo(out.shape)(row)),)
