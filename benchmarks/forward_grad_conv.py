"""A 2-D convolution whose gradients are computed with forward convolutions (and matmuls for 1x1 kernels).

An experiment of ``bench_train_memory.py convs --conv forward``, kept to reproduce benchmarks/README.md ("Where
DETR-R50 training memory goes"): MindSpore 2.10's CPU convolution-gradient kernels each keep a large scratch
buffer for the life of a compiled graph (about 390 MB for a 3x3, 64-channel convolution on 2x64x200x267), while
forward convolution kernels do not grow with their number. It halves the micro-benchmark's memory but raised
the DETR-R50 training step's peak, so the detectors do not use it.

:class:`ForwardGradConv2d` defines its own ``bprop`` from the textbook identities (Dumoulin and Visin, "A guide
to convolution arithmetic for deep learning", 2016, sections 4-5):

* input gradient: the transposed convolution, i.e. a forward convolution of the output gradient, zero-inserted
  between rows and columns when ``stride > 1``, with the kernel's two channel axes swapped and its taps flipped,
  padded by ``dilation * (k - 1) - padding`` (plus the rows and columns a strided forward pass never read);
* weight gradient: a forward convolution with the batch and channel axes swapped, the input ``x^T``
  ``[C_in, B, H, W]`` as the batch of images and the output gradient ``g^T`` ``[C_out, B, H', W']`` as the
  kernel, with the kernel dilated by ``stride`` and striding by ``dilation``; the leading ``k x k`` of its
  ``[C_in, C_out, .., ..]`` result, transposed, is ``dW``;
* 1x1 kernels without padding: both gradients are batched matmuls over ``[B, C, H' * W']`` (the input
  subsampled by ``stride`` for the weight gradient, the input gradient zero-inserted back to ``H x W``).
"""

from mindspore import nn, ops


class ForwardGradConv2d(nn.Cell):
    """``conv2d(x, weight)`` (no bias, one group) with a custom backward built from forward convolutions.

    Stateless: one instance can serve every convolution; the geometry comes with each call as Python ints,
    which graph mode treats as constants. Works in graph mode and PyNative.

    Inputs:
        x (Tensor[float32]): ``[B, C_in, H, W]``.
        weight (Tensor[float32]): ``[C_out, C_in, k, k]``, square kernel.
        stride (int): stride of both spatial axes.
        padding (int): symmetric zero padding of both spatial axes, at most ``dilation * (k - 1)``.
        dilation (int): dilation of both spatial axes.

    Outputs:
        Tensor[float32]: ``[B, C_out, H', W']``, ``H' = floor((H + 2 * padding - dilation * (k - 1) - 1) / stride)
        + 1``, the same values as ``ops.conv2d(x, weight, None, stride, "pad", padding, dilation)``; the
        gradients with respect to ``x`` and ``weight`` equal the built-in ones up to float rounding.
    """

    def construct(self, x, weight, stride, padding, dilation):
        return ops.conv2d(x, weight, None, stride, "pad", padding, dilation)

    def bprop(self, x, weight, stride, padding, dilation, out, dout):
        # Primitives, not ops.conv2d: MindSpore 2.10's graph mode cannot compile the functional inside a bprop.
        return (_input_grad(x, weight, dout, stride, padding, dilation),
                _weight_grad(x, weight, dout, stride, padding, dilation), 0, 0, 0)


def _spread(grad, s, before, height, width):
    """Zero-insert ``s - 1`` rows/columns after each of ``grad``'s, pad ``before`` in front, then pad or crop
    the end to ``height`` x ``width``."""
    b, c, oh, ow = grad.shape
    spread = ops.pad(grad.reshape(b, c, oh, 1, ow, 1), (0, s - 1, 0, 0, 0, s - 1)).reshape(b, c, oh * s, ow * s)
    return ops.pad(spread, (before, width - before - ow * s, before, height - before - oh * s))


def _input_grad(x, weight, dout, s, p, d):
    k = weight.shape[2]
    height, width = x.shape[2], x.shape[3]
    if k == 1 and p == 0:
        b, c, oh, ow = dout.shape
        grad = ops.BatchMatMul(transpose_a=True)(ops.broadcast_to(weight.reshape(1, c, -1), (b, -1, -1)),
                                                 dout.reshape(b, c, oh * ow))
        grad = grad.reshape(b, -1, oh, ow)
        return grad if s == 1 else _spread(grad, s, 0, height, width)
    flipped = ops.flip(weight, (2, 3)).transpose(1, 0, 2, 3)
    edge = d * (k - 1) - p
    if s == 1:
        return ops.Conv2D(flipped.shape[0], k, pad_mode="pad", pad=edge, dilation=d)(dout, flipped)
    # The transposed convolution needs H + d(k-1) rows after padding.
    spread = _spread(dout, s, edge, height + d * (k - 1), width + d * (k - 1))
    return ops.Conv2D(flipped.shape[0], k, dilation=d)(spread, flipped)


def _weight_grad(x, weight, dout, s, p, d):
    k = weight.shape[2]
    if k == 1 and p == 0:
        b, c, oh, ow = dout.shape
        if s > 1:
            x = x[:, :, ::s, ::s]
        grad = ops.BatchMatMul(transpose_b=True)(dout.reshape(b, c, oh * ow), x.reshape(b, x.shape[1], oh * ow))
        return grad.sum(0).reshape(weight.shape)
    images = x.transpose(1, 0, 2, 3)
    kernel = dout.transpose(1, 0, 2, 3)
    grad = ops.Conv2D(kernel.shape[0], kernel.shape[2:], pad_mode="pad", pad=p, stride=d, dilation=s)(images, kernel)
    return grad[:, :, :k, :k].transpose(1, 0, 2, 3)
