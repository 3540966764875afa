"""DeFRCN behind the zoo's model contract: mask-derived image sizes, dataset class ids, a target-aware loss network.

The zoo's tensors (SPEC.md) differ from detectron2's in three ways, bridged here:

* Image sizes: DeFRCN needs each image's unpadded (height, width); the pipeline gives a padding mask
  (True on padding, bottom/right), so the size is the number of rows / columns holding any real pixel.
* Targets: the pipeline gives normalized cxcywh boxes of the unpadded resized image and dataset category ids
  (COCO: raw ids; VOC: 1 + index in ``VOC_CLASSES``); DeFRCN's losses take xyxy input-image pixels and
  contiguous class indices ``0..C-1`` in the detector's class order (``src.data.sources.detector_class_ids``).
  A target whose id is not one of the detector's classes is ignored (treated as a padded row).
* Detections: contiguous indices become dataset ids through a constant lookup table, boxes go to original
  pixels with :class:`~src.models.defrcn.model.DetectorPostprocess` (detectron2 ``detector_postprocess``).

Invalid detection slots (fewer than ``detections_per_image`` detections, or a box emptied by the rescale) come
out with score 0, label -1 and a zero box, so that every consumer can drop them by ``label < 0``. A real
detection never has label -1, and its score is > ``score_thresh`` before PCB (which may lower it below 0).

Parameter names stay detectron2's (``backbone.*``, ``roi_heads.*``, ...) in both the inference network and the
loss network, so training checkpoints, converted DeFRCN weights and the model surgery share one key set.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from src.models.defrcn.losses import DeFRCNWithLoss
from src.models.defrcn.model import DeFRCN, DetectorPostprocess
from src.ops.box_ops import box_cxcywh_to_xyxy

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")
"""Names of DeFRCNWithLoss's terms, in its order (detectron2's loss dict keys)."""


def image_sizes_from_mask(mask: Tensor) -> Tensor:
    """(height, width) of the unpadded part of each image, float32 ``[B, 2]``.

    Args:
        mask: bool ``[B, H, W]``, True on padding (padding sits at the bottom and right).
    """
    real = ops.logical_not(mask)
    height = real.any(axis=2).astype(ms.float32).sum(axis=1)
    width = real.any(axis=1).astype(ms.float32).sum(axis=1)
    return ops.stack([height, width], axis=1)


class DeFRCNNetwork(nn.Cell):
    """``(image, mask) -> outputs`` for inference: DeFRCN with the image sizes taken from the mask.

    Args:
        model: the :class:`~src.models.defrcn.model.DeFRCN` Cell (its parameter names are kept, no prefix).

    Inputs:
        image (Tensor[float32]): ``[B, 3, H, W]``, caffe-normalized BGR (``data.normalize: caffe_bgr``).
        mask (Tensor[bool]): ``[B, H, W]``, True on padding.

    Outputs (the tuple :class:`DeFRCNPostprocess` takes):
        boxes float32 ``[B, D, 4]`` xyxy resized-input pixels; scores float32 ``[B, D]`` descending;
        labels int32 ``[B, D]`` contiguous class index; valid bool ``[B, D]``; image_sizes float32 ``[B, 2]``
        (h, w). D = ``detections_per_image``.
    """

    def __init__(self, model: DeFRCN):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, image: Tensor, mask: Tensor):
        image_sizes = image_sizes_from_mask(mask)
        boxes, scores, labels, valid = self.model(image, image_sizes)
        return boxes, scores, labels, valid, image_sizes


class DeFRCNPostprocess(nn.Cell):
    """``(*outputs, orig_sizes) -> (scores, labels, boxes)`` in dataset ids and original pixels.

    Args:
        class_ids: dataset category id of each contiguous class index (``detector_class_ids(data_cfg)``).

    Inputs:
        boxes, scores, labels, valid, image_sizes: the outputs of :class:`DeFRCNNetwork`.
        orig_sizes (Tensor): ``[B, 2]`` (height, width) of the original images.

    Outputs:
        scores float32 ``[B, D]`` (0 where invalid); labels int32 ``[B, D]`` dataset category ids (-1 where
        invalid); boxes float32 ``[B, D, 4]`` xyxy original-image pixels, clipped (zeros where invalid).
    """

    def __init__(self, class_ids: Sequence[int]):
        super().__init__()
        self.class_ids = Tensor(np.asarray(class_ids, np.int32))
        self.rescale = DetectorPostprocess()

    def construct(self, boxes, scores, labels, valid, image_sizes, orig_sizes):
        boxes, keep = self.rescale(boxes, valid, image_sizes, orig_sizes)
        ids = ops.gather(self.class_ids, labels, 0)
        ids = ops.select(keep, ids, ops.full(ids.shape, -1, dtype=ms.int32))
        return scores * keep.astype(ms.float32), ids, boxes


class DeFRCNLossNetwork(nn.Cell):
    """``(image, mask, tgt_boxes, tgt_labels, tgt_valid) -> (loss, loss_terms)``: DeFRCN's four training losses.

    Args:
        with_loss: :class:`~src.models.defrcn.losses.DeFRCNWithLoss` around the DeFRCN Cell.
        class_ids: dataset category id of each contiguous class index.

    Inputs (SPEC tensor conventions):
        image float32 ``[B, 3, H, W]``; mask bool ``[B, H, W]``; tgt_boxes float32 ``[B, N, 4]`` normalized cxcywh
        of the unpadded resized image; tgt_labels int32 ``[B, N]`` dataset category ids; tgt_valid bool ``[B, N]``.

    Outputs:
        loss float32 scalar (sum of the terms); loss_terms float32 ``[4]`` in :data:`LOSS_NAMES` order.
    """

    def __init__(self, with_loss: DeFRCNWithLoss, class_ids: Sequence[int]):
        super().__init__(auto_prefix=False)
        self.with_loss = with_loss
        ids = np.asarray(class_ids, np.int64)
        # One slot past the largest id stays -1: every larger id is clipped onto it and so ignored.
        table = np.full(int(ids.max()) + 2, -1, np.int32)
        table[ids] = np.arange(len(ids), dtype=np.int32)
        self.index_of_id = Tensor(table)
        self.max_id = int(ids.max()) + 1

    def construct(self, image, mask, tgt_boxes, tgt_labels, tgt_valid):
        image_sizes = image_sizes_from_mask(mask)
        width, height = image_sizes[:, 1:2], image_sizes[:, 0:1]
        scale = ops.concat([width, height, width, height], axis=1).expand_dims(1)  # [B, 1, 4]
        gt_boxes = box_cxcywh_to_xyxy(tgt_boxes) * scale
        index = ops.gather(self.index_of_id, ops.clip_by_value(tgt_labels, 0, self.max_id), 0)
        gt_valid = ops.logical_and(tgt_valid, index >= 0)
        gt_classes = ops.maximum(index, 0)
        return self.with_loss(image, image_sizes, gt_boxes, gt_classes, gt_valid)


def build_defrcn(cfg: Mapping[str, Any], class_ids: Sequence[int]):
    """Networks of a ``defrcn`` config: inference network, post-process and loss network.

    Args:
        cfg: a loaded config (``model``, ``loss`` and ``train.seed`` are read).
        class_ids: the detector's classes as dataset category ids, in contiguous order.

    Returns:
        (network, postprocess, loss_network) for :class:`src.models.Detector`.

    Raises:
        ValueError: an empty or repeated class list.
    """
    class_ids = [int(c) for c in class_ids]
    if not class_ids or len(set(class_ids)) != len(class_ids) or min(class_ids) < 0:
        raise ValueError(f"DeFRCN needs distinct non-negative class ids, got {class_ids}")
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    for key in ("anchor_sizes", "anchor_ratios"):
        model_cfg[key] = tuple(model_cfg[key])
    if isinstance(model_cfg["depth"], list):
        model_cfg["depth"] = tuple(model_cfg["depth"])
    model = DeFRCN(num_classes=len(class_ids), **model_cfg)
    with_loss = DeFRCNWithLoss(model, len(class_ids), seed=int(cfg["train"]["seed"]), **cfg["loss"])
    # DeFRCNWithLoss stores the model as `net`, which prefixes every parameter name with "net."; restore the
    # detectron2 names that checkpoints, converters and the surgery use.
    model.update_parameters_name()
    return DeFRCNNetwork(model), DeFRCNPostprocess(class_ids), DeFRCNLossNetwork(with_loss, class_ids)
