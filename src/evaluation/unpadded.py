"""Unpadded inference: each image at its own size, batch 1, with a bounded number of graph compiles.

The reference implementations (facebookresearch/detr, detrex, detectron2 / DeFRCN) evaluate one image at a time at
its resized size; padding to a bucket changes the backbone's values near the right and bottom edges and, for
DeFRCN, adds anchors in the padded area (issue 12). Graph mode compiles once per input shape, so running every COCO
size (hundreds) as a static graph is not an option. :class:`UnpaddedInference` instead runs the inference network
in PyNative mode with its size-independent parts compiled once as MindSpore dynamic-shape graphs (``Cell.set_inputs``
with ``Tensor(shape=[1, 3, None, None])`` and ``mindspore.jit`` on the Cell's ``construct``). Each model names those
parts in its ``model.py`` (``unpadded_parts``, :mod:`src.models.contract`):

* DETR: the whole network and post-process (one graph; its shapes follow H and W without Python integers).
* Focus-DETR: the ResNet backbone and the neck (one graph, :meth:`src.models.focus_detr.model.FocusDETR.features`);
  detrex-style token selection needs the level sizes as Python integers, so the transformer and post-process run
  eagerly. A Swin backbone (whose window padding needs Python integers too) runs eagerly as well: no graph.
* DeFRCN: the res2-res4 trunk, the RPN head, the box head (ROIAlign + res5 on the fixed proposal count) and the
  fast R-CNN inference (four graphs); anchors and proposal selection run eagerly.

Buckets stay the mode of batched and exported inference (``eval.unpadded: false``).
"""

from __future__ import annotations

import weakref

import mindspore as ms
from mindspore import nn

from src.models import unpadded_parts
from src.runtime import pynative_mode


def _compile_dynamic(cell: nn.Cell, *signature) -> None:
    """Make ``cell`` run as a graph even in PyNative mode: one graph for every input of ``signature`` (None: any
    size); without a signature, a graph for the first input shapes (for parts whose shapes never change)."""
    if signature:
        cell.set_inputs(*signature)
    cell.construct = ms.jit(cell.construct)


class UnpaddedInference:
    """An inference network that takes one image at its own size: ``(image, mask, orig_size) -> outputs``.

    Wraps an :class:`src.models.contract.InferenceNet` (weights loaded), compiling its size-independent parts as
    dynamic-shape graphs (see the module docstring); each call runs in PyNative mode (restored afterwards), so it
    also works in a process set to graph mode. The compiled graphs are built on the first call: evaluating N images
    of N sizes compiles 1 (DETR), 1 (Focus-DETR; 0 with Swin) or 4 (DeFRCN) graphs, whatever N. ``eager=True``
    compiles nothing (``--pynative``, debugging).

    Args:
        net: the InferenceNet; its Cells are changed in place (their ``construct`` becomes a compiled graph), so it
            must not be reused for static-shape (bucketed or exported) inference.
        model_name: ``model.name`` of the config: "detr", "focus_detr" or "defrcn".
        eager: run every part eagerly.

    Inputs:
        image float32 ``[1, 3, H, W]`` (any H, W); mask bool ``[1, H, W]`` (all False: nothing padded);
        orig_size int32 ``[1, 2]`` (height, width) of the original image.

    Outputs:
        the InferenceNet's ``(scores [1, D], labels [1, D], boxes [1, D, 4])``.

    Raises:
        ValueError: an unknown model name, or an input batch other than one image (names the shape).
    """

    def __init__(self, net: nn.Cell, model_name: str, eager: bool = False):
        self.net = net
        self.net.set_train(False)
        if not eager:
            for cell, signature in unpadded_parts(model_name, net):
                _compile_dynamic(cell, *signature)

    def __call__(self, image, mask, orig_size):
        if image.shape[0] != 1:
            raise ValueError(f"unpadded inference takes one image per call (eval.batch_size 1), got a batch of "
                             f"shape {tuple(image.shape)}")
        with pynative_mode():
            return self.net(image, mask, orig_size.astype(ms.int32))


_PREPARED = weakref.WeakKeyDictionary()


def unpadded_inference(net: nn.Cell, model_name: str, eager: bool = False) -> UnpaddedInference:
    """The :class:`UnpaddedInference` of ``net``, built on the first call for that network and reused afterwards
    (so evaluating the same network twice compiles its graphs once)."""
    if net not in _PREPARED:
        _PREPARED[net] = UnpaddedInference(net, model_name, eager)
    return _PREPARED[net]
