"""The two Cells every model of the zoo is run as: a training network and an inference network.

* Training: ``(image, mask, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms)``. A model whose forward pass
  does not need the targets (DETR) is its network followed by its criterion, :class:`NetWithCriterion`; a model
  whose forward pass needs them (Focus-DETR's denoising queries, DeFRCN's proposal sampling) provides its own Cell.
* Inference: ``(image, mask, orig_size) -> (scores, labels, boxes)``, :class:`InferenceNet`: the network followed
  by the model's post-processing (what eval.py, infer.py and export.py run).
* Optionally, a host-side :class:`ScoreCalibrator` that re-scores each evaluated image's detections (DeFRCN's PCB);
  a model supplies it with a ``build_score_calibrator(cfg, root, cache_root)`` function in its ``model.py``
  (``src.models.build_score_calibrator``).

Tensor conventions (SPEC.md): image float32 ``[B, 3, H, W]`` normalized and zero-padded; mask bool ``[B, H, W]``,
True on padding; tgt_boxes float32 ``[B, N, 4]`` normalized cxcywh; tgt_labels int32 ``[B, N]`` dataset category
ids; tgt_valid bool ``[B, N]``. Both wrappers are built with ``auto_prefix=False``: their parameter names are
the wrapped network's, i.e. the checkpoint keys.

Unpadded evaluation (``src.evaluation.unpadded``) asks each model's ``model.py`` for ``unpadded_parts(net)``: the
Cells of its inference network that compile once as dynamic-shape graphs, with their input signatures (the
``DYNAMIC_*`` tensors below; None marks a size that changes from image to image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

DYNAMIC_IMAGE = Tensor(shape=[1, 3, None, None], dtype=ms.float32)
"""Signature of one normalized image of any size, float32 ``[1, 3, H, W]``."""
DYNAMIC_MASK = Tensor(shape=[1, None, None], dtype=ms.bool_)
"""Signature of its padding mask, bool ``[1, H, W]``."""
DYNAMIC_MAP = Tensor(shape=[1, None, None, None], dtype=ms.float32)
"""Signature of one feature map of any channel count and size, float32 ``[1, C, H, W]``."""
ORIG_SIZE = Tensor(shape=[1, 2], dtype=ms.int32)
"""Signature of the original image's (height, width), int32 ``[1, 2]``."""


class NetWithCriterion(nn.Cell):
    """A network and its criterion as one training Cell: ``criterion(*network(image, mask), targets...)``.

    Args:
        network: Cell ``(image, mask) -> outputs`` (a tuple; DETR: ``(pred_logits [L,B,Q,C+1], pred_boxes
            [L,B,Q,4])``).
        criterion: Cell ``(*outputs, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms)`` (DETR:
            ``SetCriterion``).

    Outputs:
        loss float32 scalar (weighted total), loss_terms float32 ``[T]`` (the criterion's logging terms).
    """

    def __init__(self, network: nn.Cell, criterion: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.criterion = criterion

    def construct(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        outputs = self.network(image, mask)
        return self.criterion(*outputs, tgt_boxes, tgt_labels, tgt_valid)


class InferenceNet(nn.Cell):
    """Network and post-process as one graph: ``postprocess(*network(image, mask), orig_size)``.

    Args:
        network: Cell ``(image, mask) -> outputs`` (a tuple).
        postprocess: Cell ``(*outputs, orig_size) -> (scores, labels, boxes)``.

    Inputs:
        image: float32 [B, 3, H, W], normalized, zero-padded; mask: bool [B, H, W], True on padding;
        orig_size: int32 or float32 [B, 2], (height, width) of the original images in pixels.

    Outputs:
        scores float32 [B, Q]; labels int32 [B, Q] (category ids); boxes float32 [B, Q, 4], xyxy in
        original-image pixels.
    """

    def __init__(self, network: nn.Cell, postprocess: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.postprocess = postprocess

    def construct(self, image, mask, orig_size):
        outputs = self.network(image, mask)
        return self.postprocess(*outputs, orig_size.astype(ms.float32))


@dataclass
class Detector:
    """What ``build_model(cfg)`` returns: the Cells of one detector, sharing one set of parameters.

    Attributes:
        network: ``(image, mask) -> outputs`` (a tuple; DETR: ``(pred_logits [L,B,Q,C+1], pred_boxes [L,B,Q,4],
            ...)``); its parameter names are the checkpoint keys (save, load and convert use it).
        postprocess: ``(*outputs, orig_size [B,2]) -> (scores [B,S], labels [B,S] dataset category ids (raw COCO
            ids for COCO), boxes xyxy [B,S,4] in original pixels)``. DeFRCN marks empty slots, and Focus-DETR
            boxes left empty by clipping to the image, with label -1 and score 0.
        train_network: ``(image, mask, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms [T])``, what
            :class:`src.engine.train_step.TrainStep` trains.
        loss_names: the names of the ``T`` entries of ``loss_terms``.
        inference_network: ``(image, mask, orig_size) -> (scores, labels, boxes)``, the :class:`InferenceNet` of
            ``network`` and ``postprocess`` (set from them).
    """

    network: nn.Cell
    postprocess: nn.Cell
    train_network: nn.Cell
    loss_names: tuple
    inference_network: InferenceNet = field(init=False)

    def __post_init__(self):
        self.inference_network = InferenceNet(self.network, self.postprocess)


class ScoreCalibrator(Protocol):
    """Re-scores one image's post-processed detections on the host, before the evaluator sees them.

    Attributes:
        name: what the evaluation log and ``metrics.json`` call it (DeFRCN: "PCB", written as ``"pcb": true``).

    Call: ``(image_path, scores float [D], labels int [D] dataset category ids (-1: empty slot, left unchanged),
    boxes float [D, 4] xyxy original-image pixels) -> float32 [D]`` calibrated scores.
    """

    name: str

    def __call__(self, image_path: Path, scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        ...
