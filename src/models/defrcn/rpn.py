"""Region proposal network on the single res4 map, with static-shape proposal selection.

Follows detectron2 ``modeling/proposal_generator/rpn.py`` (``StandardRPNHead``, ``RPN``) and
``proposal_utils.py::find_top_rpn_proposals`` as DeFRCN uses them (one feature level, 15 anchors,
Box2BoxTransform weights (1, 1, 1, 1), NMS 0.7, pre/post-NMS top-k 12000/2000 in training and 6000/1000 at
test time). In DeFRCN the RPN does not see res4 directly: ``GeneralizedRCNN`` feeds it
``affine_rpn(GDL(res4, RPN.BACKWARD_SCALE = 0))``; that block (:class:`~src.models.defrcn.gdl.DecoupledAffine`)
is owned by :class:`~src.models.defrcn.model.DeFRCN` under detectron2's key ``affine_rpn``.

Static shapes replace detectron2's variable-length lists: every image gets exactly ``post_nms_topk`` proposal
slots plus a validity mask (proposals that were removed by the empty-box filter or by NMS, or that never
existed because the image has fewer anchors, are invalid and set to zero boxes).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import Normal

from src.ops.anchors import DEFAULT_RATIOS, DEFAULT_SIZES, cell_anchors
from src.ops.box_coder import RPN_WEIGHTS, decode_boxes
from src.ops.box_ops import clip_boxes
from src.ops.nms import NMS


class StandardRPNHead(nn.Cell):
    """3x3 conv + ReLU, then 1x1 objectness logits (A) and 1x1 anchor deltas (4A) (detectron2 ``StandardRPNHead``).

    Parameter names are detectron2's: ``conv``, ``objectness_logits``, ``anchor_deltas`` (``.weight``/``.bias``);
    weights are initialised normal(std 0.01) and biases 0 as in detectron2.

    Args:
        in_channels: channels of the input map (1024 for res4).
        num_anchors: anchors per location A (15).

    Inputs:
        x (Tensor[float32]): ``[B, C, H, W]``.

    Outputs:
        logits (Tensor[float32]): ``[B, A, H, W]`` objectness logits.
        deltas (Tensor[float32]): ``[B, 4A, H, W]``, channel ``4a + j`` is delta j of anchor a.
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, pad_mode="pad", padding=1, has_bias=True,
                              weight_init=Normal(0.01), bias_init="zeros")
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1, pad_mode="valid", has_bias=True,
                                           weight_init=Normal(0.01), bias_init="zeros")
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, 1, pad_mode="valid", has_bias=True,
                                       weight_init=Normal(0.01), bias_init="zeros")

    def construct(self, x: Tensor):
        hidden = ops.relu(self.conv(x))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


class RPN(nn.Cell):
    """RPN head + anchors + proposal selection for one feature level (stride 16).

    The selection per image follows ``find_top_rpn_proposals``: decode every anchor with its deltas, keep the
    ``pre_nms_topk`` highest objectness logits, clip the boxes to the image, drop empty or non-finite boxes
    (width or height <= ``min_box_size``), run NMS at ``nms_thresh`` and keep the first ``post_nms_topk``.
    Anchors are built in the graph from the (static) feature size, in the order of
    :func:`src.ops.anchors.grid_anchors`. ``set_train(True)`` selects the training top-k values.

    Args:
        in_channels: feature channels (1024).
        anchor_sizes, anchor_ratios: see :mod:`src.ops.anchors` (32..512, 0.5/1/2).
        stride: feature stride in input pixels (16).
        anchor_offset: anchor centre offset in units of the stride (0 in DeFRCN).
        nms_thresh: proposal NMS IoU threshold (0.7).
        pre_nms_topk_train, post_nms_topk_train: 12000 / 2000 in detectron2.
        pre_nms_topk_test, post_nms_topk_test: 6000 / 1000 in detectron2 / DeFRCN.
        min_box_size: boxes with width or height <= this (input pixels) are dropped (detectron2 0).

    Inputs:
        features (Tensor[float32]): ``[B, C, H, W]`` (after ``affine_rpn``).
        image_sizes (Tensor): ``[B, 2]`` (height, width) of each unpadded input image, in input pixels.

    Outputs:
        proposals (Tensor[float32]): ``[B, P, 4]`` xyxy input-image pixels, highest objectness first; zeros
            where invalid. ``P`` = post-NMS top-k of the current mode.
        objectness (Tensor[float32]): ``[B, P]`` logits of the proposals (0 where invalid).
        valid (Tensor[bool]): ``[B, P]``; the valid slots are a prefix of each row.
        logits (Tensor[float32]): ``[B, H*W*A]`` raw objectness of every anchor (for the RPN loss).
        deltas (Tensor[float32]): ``[B, H*W*A, 4]`` raw deltas of every anchor (for the RPN loss).

    Raises:
        ValueError: if a top-k value is not positive.
    """

    def __init__(self, in_channels: int, anchor_sizes=DEFAULT_SIZES, anchor_ratios=DEFAULT_RATIOS, stride: int = 16,
                 anchor_offset: float = 0.0, nms_thresh: float = 0.7, pre_nms_topk_train: int = 12000,
                 post_nms_topk_train: int = 2000, pre_nms_topk_test: int = 6000, post_nms_topk_test: int = 1000,
                 min_box_size: float = 0.0):
        super().__init__()
        if min(pre_nms_topk_train, post_nms_topk_train, pre_nms_topk_test, post_nms_topk_test) <= 0:
            raise ValueError("RPN top-k values must be positive")
        base = cell_anchors(anchor_sizes, anchor_ratios)
        self.num_anchors = base.shape[0]
        self.cell_anchors = Tensor(base, ms.float32)
        self.stride = float(stride)
        self.offset = float(anchor_offset) * float(stride)
        self.rpn_head = StandardRPNHead(in_channels, self.num_anchors)
        self.pre_nms_topk_train = pre_nms_topk_train
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_train = post_nms_topk_train
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_train = NMS(nms_thresh, post_nms_topk_train)
        self.nms_test = NMS(nms_thresh, post_nms_topk_test)
        self.min_box_size = float(min_box_size)

    def anchors(self, height: int, width: int) -> Tensor:
        """float32 ``[height * width * A, 4]`` xyxy anchors, row ``(y * width + x) * A + a``."""
        shift_x = ops.arange(width).astype(ms.float32) * self.stride + self.offset
        shift_y = ops.arange(height).astype(ms.float32) * self.stride + self.offset
        grid_y, grid_x = ops.meshgrid(shift_y, shift_x, indexing="ij")
        grid_x = grid_x.reshape(-1)
        grid_y = grid_y.reshape(-1)
        shifts = ops.stack([grid_x, grid_y, grid_x, grid_y], axis=1)
        return (shifts.expand_dims(1) + self.cell_anchors.expand_dims(0)).reshape(-1, 4)

    def _select(self, boxes: Tensor, logits: Tensor, image_size: Tensor, pre_k: int, post_k: int, nms: NMS):
        # One image: boxes [N, 4], logits [N] -> [post_k, 4], [post_k], [post_k].
        num = logits.shape[0]
        k = min(pre_k, num)
        top_logits, top_idx = ops.topk(logits, k)
        top_boxes = ops.gather(boxes, top_idx, 0)
        if k < post_k:
            # Fewer anchors than output slots: pad with rows that the finite/non-empty test rejects.
            top_boxes = ops.concat([top_boxes, ops.zeros((post_k - k, 4), ms.float32)], axis=0)
            top_logits = ops.concat([top_logits, ops.zeros((post_k - k,), ms.float32)], axis=0)
        height = image_size[0].astype(ms.float32)
        width = image_size[1].astype(ms.float32)
        clipped = clip_boxes(top_boxes, height, width)
        x0, y0, x1, y1 = clipped[:, 0], clipped[:, 1], clipped[:, 2], clipped[:, 3]
        finite = ops.logical_and(ops.isfinite(clipped).all(axis=1), ops.isfinite(top_logits))
        nonempty = ops.logical_and(x1 - x0 > self.min_box_size, y1 - y0 > self.min_box_size)
        candidate = ops.logical_and(finite, nonempty)
        if k < post_k:
            candidate = ops.logical_and(candidate, ops.arange(post_k) < k)
        safe_boxes = ops.select(candidate.expand_dims(-1).broadcast_to(clipped.shape), clipped,
                                ops.zeros_like(clipped))
        safe_logits = ops.select(candidate, top_logits, ops.zeros_like(top_logits))
        keep, keep_valid = nms(safe_boxes, safe_logits, candidate)
        out_boxes = ops.gather(safe_boxes, keep, 0)
        out_logits = ops.gather(safe_logits, keep, 0)
        out_boxes = out_boxes * keep_valid.astype(ms.float32).expand_dims(-1)
        out_logits = out_logits * keep_valid.astype(ms.float32)
        return out_boxes, out_logits, keep_valid

    def construct(self, features: Tensor, image_sizes: Tensor):
        logits_map, deltas_map = self.rpn_head(features)
        batch, _, height, width = features.shape
        anchors = self.anchors(height, width)
        logits = logits_map.transpose(0, 2, 3, 1).reshape(batch, -1)
        deltas = deltas_map.reshape(batch, self.num_anchors, 4, height, width).transpose(0, 3, 4, 1, 2)
        deltas = deltas.reshape(batch, -1, 4)
        boxes = decode_boxes(ops.stop_gradient(deltas), anchors.expand_dims(0), RPN_WEIGHTS)
        scores = ops.stop_gradient(logits)
        if self.training:
            pre_k, post_k, nms = self.pre_nms_topk_train, self.post_nms_topk_train, self.nms_train
        else:
            pre_k, post_k, nms = self.pre_nms_topk_test, self.post_nms_topk_test, self.nms_test
        out_boxes, out_logits, out_valid = [], [], []
        for i in range(batch):
            img_boxes, img_logits, img_valid = self._select(boxes[i], scores[i], image_sizes[i], pre_k, post_k, nms)
            out_boxes.append(img_boxes)
            out_logits.append(img_logits)
            out_valid.append(img_valid)
        return ops.stack(out_boxes), ops.stack(out_logits), ops.stack(out_valid), logits, deltas
