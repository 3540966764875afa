"""DeFRCN's detections in dataset ids and original pixels (detectron2 ``detector_postprocess``).

Invalid detection slots (fewer than ``detections_per_image`` detections, or a box emptied by the rescale) come
out with score 0, label -1 and a zero box, so that every consumer can drop them by ``label < 0``. A real
detection never has label -1, and its score is > ``score_thresh`` before PCB (which may lower it below 0).
"""

from __future__ import annotations

from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class DetectorPostprocess(nn.Cell):
    """Detections from resized-input pixels to original-image pixels (detectron2 ``detector_postprocess``).

    Scales x by ``orig_w / input_w`` and y by ``orig_h / input_h``, clips to the original image and drops boxes
    that became empty (width or height <= 0), as detectron2 does before evaluation.

    Inputs:
        boxes (Tensor[float32]): ``[B, D, 4]`` xyxy in resized-input pixels.
        valid (Tensor[bool]): ``[B, D]``.
        image_sizes (Tensor): ``[B, 2]`` (height, width) of the resized unpadded input.
        orig_sizes (Tensor): ``[B, 2]`` (height, width) of the original images.

    Outputs:
        boxes (Tensor[float32]): ``[B, D, 4]`` xyxy original pixels, zeros where invalid.
        valid (Tensor[bool]): ``[B, D]``, the input validity and non-empty after scaling (no longer
            necessarily a prefix).
    """

    def construct(self, boxes: Tensor, valid: Tensor, image_sizes: Tensor, orig_sizes: Tensor):
        sizes = image_sizes.astype(ms.float32)
        orig = orig_sizes.astype(ms.float32)
        scale_y = (orig[:, 0] / sizes[:, 0]).reshape(-1, 1)
        scale_x = (orig[:, 1] / sizes[:, 1]).reshape(-1, 1)
        x0 = ops.minimum(ops.maximum(boxes[..., 0] * scale_x, 0.0), orig[:, 1:2])
        y0 = ops.minimum(ops.maximum(boxes[..., 1] * scale_y, 0.0), orig[:, 0:1])
        x1 = ops.minimum(ops.maximum(boxes[..., 2] * scale_x, 0.0), orig[:, 1:2])
        y1 = ops.minimum(ops.maximum(boxes[..., 3] * scale_y, 0.0), orig[:, 0:1])
        keep = ops.logical_and(valid, ops.logical_and(x1 > x0, y1 > y0))
        out = ops.stack([x0, y0, x1, y1], axis=-1) * keep.astype(ms.float32).expand_dims(-1)
        return out, keep


class DeFRCNPostprocess(nn.Cell):
    """``(*outputs, orig_sizes) -> (scores, labels, boxes)`` in dataset ids and original pixels.

    Args:
        class_ids: dataset category id of each contiguous class index (``detector_class_ids(data_cfg)``).

    Inputs:
        boxes, scores, labels, valid, image_sizes: the outputs of :class:`src.models.defrcn.model.DeFRCNNetwork`.
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
