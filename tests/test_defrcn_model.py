"""DeFRCN C4 detector: backbone layout and freezing, RPN proposals, ROI head dropout, end-to-end inference.

Tiny channel widths keep the graph-mode compiles fast; the layout (strides, block counts, names) is the real
one. References are written here from detectron2's definitions (torch functional ops, NumPy), not taken from
the code under test. The end-to-end inference and the two gradient tests run in PyNative: what they check does
not depend on the mode, and compiling the whole detector and three backward graphs costs more than running them
(graph-mode inference is in tests/test_defrcn_eval.py and tests/test_export_defrcn.py, graph-mode training in
tests/test_defrcn_train.py).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor, nn

from src.models.defrcn.backbone import BottleneckBlock, ResNetC4, build_res5, c2_to_d2_name, d2_to_mindspore_name


def _set_random_params(cell, rng):
    for param in cell.get_parameters():
        shape = param.shape
        if param.name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif param.name.endswith(("norm.weight", "norm.bias", "running_mean")):
            value = rng.uniform(-0.5, 0.5, shape) + (1.0 if param.name.endswith("norm.weight") else 0.0)
        else:
            value = rng.normal(0.0, 0.1, shape)
        param.set_data(Tensor(value.astype(np.float32)))


def _torch_conv_norm(x, params, prefix, stride=1, padding=0):
    weight = torch.from_numpy(params[prefix + ".weight"])
    out = F.conv2d(x, weight, stride=stride, padding=padding)
    mean, var = (torch.from_numpy(params[f"{prefix}.norm.{k}"]) for k in ("running_mean", "running_var"))
    gamma, beta = (torch.from_numpy(params[f"{prefix}.norm.{k}"]) for k in ("weight", "bias"))
    return F.batch_norm(out, mean, var, gamma, beta, training=False, eps=1e-5)


def test_strided_bottleneck_matches_msra_definition():
    """Stride on the first 1x1 (MSRA), 3x3 unstrided, projection shortcut: checked against torch ops."""
    rng = np.random.default_rng(0)
    block = BottleneckBlock(8, 16, 4, stride=2, stride_in_1x1=True)
    _set_random_params(block, rng)
    params = {p.name: p.asnumpy() for p in block.get_parameters()}
    x = rng.normal(size=(1, 8, 9, 11)).astype(np.float32)
    xt = torch.from_numpy(x)
    out = F.relu(_torch_conv_norm(xt, params, "conv1", stride=2))
    out = F.relu(_torch_conv_norm(out, params, "conv2", padding=1))
    out = _torch_conv_norm(out, params, "conv3")
    expected = F.relu(out + _torch_conv_norm(xt, params, "shortcut", stride=2)).numpy()
    got = block(Tensor(x)).asnumpy()
    assert got.shape == (1, 16, 5, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_c4_backbone_strides_channels_and_freezing():
    backbone = ResNetC4(depth=50, stem_out_channels=8, res2_out_channels=32, freeze_at=3)
    res5 = build_res5(depth=50, res2_out_channels=32)
    image = Tensor(np.random.default_rng(1).normal(size=(2, 3, 70, 100)).astype(np.float32))
    res4 = backbone(image)
    assert res4.shape == (2, 128, 5, 7)  # ceil(70/16), ceil(100/16); 4x res2 channels
    assert res5(res4).shape == (2, 256, 3, 4)
    assert len(res5) == 3 and len(backbone.res4) == 6 and len(backbone.res3) == 4
    names = {p.name: p.requires_grad for p in backbone.get_parameters()}
    assert "res2.0.conv1.norm.running_var" in names and "res3.0.shortcut.weight" in names
    for name, trainable in names.items():
        should_train = name.startswith("res4.") and ".norm." not in name
        assert trainable == should_train, name
    assert all(p.requires_grad for p in res5.get_parameters() if ".norm." not in p.name)


def test_checkpoint_name_maps():
    assert c2_to_d2_name("conv1_w") == "backbone.stem.conv1.weight"
    assert c2_to_d2_name("res_conv1_bn_b") == "backbone.stem.conv1.norm.bias"
    assert c2_to_d2_name("res4_22_branch1_bn_s") == "backbone.res4.22.shortcut.norm.weight"
    assert c2_to_d2_name("res5_0_branch2b_w") == "roi_heads.res5.0.conv2.weight"
    assert c2_to_d2_name("fc1000_w") is None
    with pytest.raises(ValueError):
        c2_to_d2_name("res6_0_branch2a_w")
    assert d2_to_mindspore_name("roi_heads.box_predictor.cls_score.weight") == \
        "roi_heads.box_predictor.cls_score.weight"
    with pytest.raises(ValueError):
        d2_to_mindspore_name("backbone.fpn_lateral4.weight")
    with pytest.raises(ValueError):
        ResNetC4(depth=34)



def _np_decode(deltas, anchors):
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    clamp = np.log(1000.0 / 16)
    x = deltas[:, 0] * widths + ctr_x
    y = deltas[:, 1] * heights + ctr_y
    w = np.exp(np.minimum(deltas[:, 2], clamp)) * widths
    h = np.exp(np.minimum(deltas[:, 3], clamp)) * heights
    return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)


def _np_iou(box, boxes):
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _np_proposals(logits, deltas, anchors, image_hw, pre_k, post_k, thresh):
    """find_top_rpn_proposals for one image, written from detectron2's description."""
    order = np.argsort(-logits, kind="stable")[:pre_k]
    boxes = _np_decode(deltas[order], anchors[order])
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image_hw[1])
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image_hw[0])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[keep], logits[order][keep]
    kept = []
    for i in range(len(boxes)):
        if all(_np_iou(boxes[i], boxes[j:j + 1])[0] <= thresh for j in kept):
            kept.append(i)
    suppressed = len(boxes) - len(kept)
    kept = kept[:post_k]
    return boxes[kept], scores[kept], suppressed


def test_rpn_proposals_static_clipped_nms_and_reference():
    from src.models.defrcn.rpn import RPN
    from src.ops.anchors import grid_anchors

    rng = np.random.default_rng(2)
    rpn = RPN(16, pre_nms_topk_test=300, post_nms_topk_test=40, nms_thresh=0.7)
    # Larger random weights than the 0.01 init so that deltas move boxes and NMS has work to do.
    for param in rpn.get_parameters():
        param.set_data(Tensor(rng.normal(0.0, 0.2, param.shape).astype(np.float32)))
    rpn.set_train(False)
    features = rng.normal(size=(2, 16, 8, 10)).astype(np.float32)
    image_sizes = np.array([[128, 160], [100, 90]], np.float32)  # second image padded inside the batch
    proposals, objectness, valid, logits, deltas = (o.asnumpy() for o in rpn(Tensor(features), Tensor(image_sizes)))
    assert proposals.shape == (2, 40, 4) and objectness.shape == (2, 40) and valid.shape == (2, 40)
    assert logits.shape == (2, 8 * 10 * 15) and deltas.shape == (2, 8 * 10 * 15, 4)
    anchors = grid_anchors((8, 10), stride=16)
    for i in range(2):
        n = int(valid[i].sum())
        assert n > 0 and valid[i, :n].all() and not valid[i, n:].any()
        boxes = proposals[i, :n]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= image_sizes[i, 1]).all() and (boxes[:, 3] <= image_sizes[i, 0]).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        for j in range(n):
            assert (_np_iou(boxes[j], np.delete(boxes, j, axis=0)) <= 0.7 + 1e-6).all()
        assert (np.diff(objectness[i, :n]) <= 0).all()
        ref_boxes, ref_scores, suppressed = _np_proposals(logits[i], deltas[i], anchors, image_sizes[i], 300, 40, 0.7)
        assert n == len(ref_boxes) and suppressed > 0  # NMS removed boxes in this example
        np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(objectness[i, :n], ref_scores, rtol=1e-6)


def _tiny_roi_heads(num_classes=3, cls_dropout=True):
    from src.models.defrcn.roi_heads import Res5ROIHeads

    return Res5ROIHeads(build_res5(depth=50, res2_out_channels=8), 64, num_classes, cls_dropout=cls_dropout)


def test_roi_head_dropout_only_in_training_and_only_on_classifier():
    rng = np.random.default_rng(3)
    heads = _tiny_roi_heads()
    _set_random_params(heads.res5, rng)
    features = Tensor(rng.normal(size=(2, 32, 6, 8)).astype(np.float32))
    proposals = Tensor(np.array([[[0, 0, 40, 30], [10, 20, 90, 80], [5, 5, 120, 90]],
                                 [[30, 0, 60, 50], [0, 0, 127, 95], [50, 40, 70, 60]]], np.float32))
    heads.set_train(False)
    eval_a = [o.asnumpy() for o in heads(features, proposals)]
    eval_b = [o.asnumpy() for o in heads(features, proposals)]
    assert eval_a[0].shape == (6, 4) and eval_a[1].shape == (6, 12)
    np.testing.assert_array_equal(eval_a[0], eval_b[0])
    heads.set_train(True)
    train_a = [o.asnumpy() for o in heads(features, proposals)]
    train_b = [o.asnumpy() for o in heads(features, proposals)]
    assert not np.allclose(train_a[0], train_b[0])
    assert not np.allclose(train_a[0], eval_a[0])
    # bbox_pred sees the features before dropout.
    np.testing.assert_allclose(train_a[1], eval_a[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(train_b[1], eval_a[1], rtol=1e-5, atol=1e-7)


def test_fast_rcnn_inference_threshold_per_class_nms_and_padding():
    from src.models.defrcn.roi_heads import FastRCNNInference

    proposals = np.array([[[10, 10, 50, 50], [12, 10, 52, 50], [60, 60, 90, 90], [0, 0, 20, 20]]], np.float32)
    valid = np.array([[True, True, True, False]])
    # Probabilities over (class 0, class 1, background) via log-probabilities as logits.
    probs = np.array([[0.90, 0.04, 0.06],   # kept: class 0
                      [0.50, 0.40, 0.10],   # class 0 suppressed by row 0 (IoU > 0.5); class 1 kept
                      [0.03, 0.04, 0.93],   # both below 0.05
                      [0.95, 0.01, 0.04]],  # invalid proposal
                     np.float32)
    logits = np.log(probs)
    deltas = np.zeros((4, 8), np.float32)
    post = FastRCNNInference(num_classes=2, score_thresh=0.05, nms_thresh=0.5, detections_per_image=10,
                             max_candidates=10)  # 8 pairs < 10 slots: padded
    boxes, scores, labels, keep = (o.asnumpy() for o in post(Tensor(logits), Tensor(deltas), Tensor(proposals),
                                                              Tensor(valid), Tensor(np.array([[80, 70]], np.int32))))
    assert boxes.shape == (1, 10, 4) and scores.shape == (1, 10) and labels.shape == (1, 10) and keep.shape == (1, 10)
    assert keep[0].tolist() == [True, True] + [False] * 8
    np.testing.assert_allclose(scores[0, :2], [0.90, 0.40], rtol=1e-5)
    assert labels[0, :2].tolist() == [0, 1]
    # Zero deltas give the proposal itself, clipped to the 80 x 70 (h x w) image.
    np.testing.assert_allclose(boxes[0, :2], [[10, 10, 50, 50], [12, 10, 52, 50]], atol=1e-4)
    assert (boxes[0, 2:] == 0).all() and (scores[0, 2:] == 0).all()


def _caffe_input(path, short=128, max_size=160):
    """detectron2-style resize (shortest side, capped longest side) and BGR mean subtraction."""
    import cv2

    bgr = cv2.imread(str(path))
    h, w = bgr.shape[:2]
    scale = min(short / min(h, w), max_size / max(h, w))
    nh, nw = int(round(h * scale)), int(round(w * scale))
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    resized -= np.array([103.53, 116.28, 123.675], np.float32)
    padded = np.zeros((3, short, max_size), np.float32)  # static batch shape, zero-padded bottom/right
    padded[:, :nh, :nw] = resized.transpose(2, 0, 1)
    return padded, (nh, nw)


def _tame(net):
    """Untrained FrozenBN is the identity, so a random 50-layer trunk blows activations up to ~1e4 and every
    RPN box degenerates. Zero the last norm of each residual branch (as in zero-init-residual) and shrink the
    stem so features stay O(1), the regime of a trained detector."""
    for param in net.get_parameters():
        if param.name.endswith("conv3.norm.weight"):
            param.set_data(Tensor(np.zeros(param.shape, np.float32)))
        elif param.name.endswith("stem.conv1.norm.weight"):
            param.set_data(Tensor(np.full(param.shape, 0.01, np.float32)))


def test_defrcn_inference_on_real_image(shared_data):
    import mindspore as ms

    from src.models.defrcn.model import DeFRCN

    ms.set_context(mode=ms.PYNATIVE_MODE)
    image_dir = shared_data / "coco_tiny" / "val2017"
    paths = sorted(image_dir.glob("*.jpg"))[:2]
    inputs = [_caffe_input(p) for p in paths]
    images = np.stack([x for x, _ in inputs])
    sizes = np.array([hw for _, hw in inputs], np.float32)
    net = DeFRCN(num_classes=3, depth=50, stem_out_channels=8, res2_out_channels=16, freeze_roi_feat=True,
                 rpn_pre_nms_topk_test=200, rpn_post_nms_topk_test=50, max_candidates=150, cls_dropout=True)
    for name in (p.name for p in net.get_parameters()):
        d2_to_mindspore_name(name)  # every parameter sits where a DeFRCN checkpoint key would
    names = {p.name: p.requires_grad for p in net.get_parameters()}
    assert names["affine_rcnn.weight"] and names["proposal_generator.rpn_head.conv.weight"]
    assert not names["roi_heads.res5.0.conv1.weight"] and not names["backbone.res3.0.conv1.weight"]
    assert names["roi_heads.box_predictor.cls_score.weight"] and names["backbone.res4.0.conv1.weight"]
    _tame(net)
    net.set_train(False)
    boxes, scores, labels, valid = (o.asnumpy() for o in net(Tensor(images), Tensor(sizes)))
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100) and labels.shape == (2, 100)
    assert valid.shape == (2, 100) and valid.dtype == np.bool_ and labels.dtype == np.int32
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    for i in range(2):
        n = int(valid[i].sum())
        assert n > 10 and valid[i, :n].all() and not valid[i, n:].any()
        assert (scores[i, :n] > 0.05).all() and (np.diff(scores[i, :n]) <= 0).all()
        assert ((labels[i, :n] >= 0) & (labels[i, :n] < 3)).all()
        b = boxes[i, :n]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= sizes[i, 1]).all() and (b[:, 3] <= sizes[i, 0]).all()
    again = net(Tensor(images), Tensor(sizes))[1].asnumpy()
    np.testing.assert_array_equal(again, scores)  # eval mode: dropout off, deterministic


def test_anchor_labels_thresholds_and_low_quality_matches():
    from src.models.defrcn.losses import anchor_labels, match_boxes

    gt = Tensor(np.array([[[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 0, 0]]], np.float32))
    gt_valid = Tensor(np.array([[True, True, False]]))
    boxes = Tensor(np.array([[[0, 0, 10, 11],      # IoU 10/11 with gt0: foreground
                              [0, 0, 10, 20],      # IoU 0.5: ignored
                              [50, 50, 60, 60],    # IoU 0: background
                              [100, 100, 120, 125],  # IoU 0.2 with gt1, its best anchor: low-quality foreground
                              [0, 0, 0, 0]]], np.float32))  # equals the padded gt row, which must not match
    iou, vals, matches = match_boxes(gt, gt_valid, boxes)
    labels = anchor_labels(iou, vals, gt_valid, (0.3, 0.7)).asnumpy()
    assert labels.tolist() == [[1, -1, 0, 1, 0]]
    assert matches.asnumpy()[0, [0, 3]].tolist() == [0, 1]


def test_subsample_labels_counts():
    from src.models.defrcn.losses import subsample_labels

    rng = np.random.default_rng(4)
    labels = rng.choice([1, 0, -1], size=(2, 1000), p=[0.3, 0.5, 0.2])
    labels[1, :] = np.where(labels[1] == 1, 0, labels[1])
    labels[1, :5] = 1  # few positives: negatives fill the rest
    pos, neg = (Tensor(labels == v) for v in (1, 0))
    noise = [Tensor(rng.uniform(size=(2, 1000)).astype(np.float32)) for _ in range(2)]
    pos_sel, neg_sel = (x.asnumpy() for x in subsample_labels(pos, neg, 256, 0.5, *noise))
    assert (labels[pos_sel] == 1).all() and (labels[neg_sel] == 0).all()
    assert pos_sel[0].sum() == 128 and neg_sel[0].sum() == 128
    assert pos_sel[1].sum() == 5 and neg_sel[1].sum() == 251


def test_defrcn_training_losses_and_gradients(shared_data):
    import mindspore as ms

    from src.models.defrcn.losses import DeFRCNWithLoss
    from src.models.defrcn.model import DeFRCN

    ms.set_context(mode=ms.PYNATIVE_MODE)
    paths = sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[:1]
    image, (h, w) = _caffe_input(paths[0])
    net = DeFRCN(num_classes=3, depth=50, stem_out_channels=8, res2_out_channels=16, cls_dropout=True,
                 rpn_pre_nms_topk_train=200, rpn_post_nms_topk_train=60)
    _tame(net)
    train_net = DeFRCNWithLoss(net, 3, rpn_batch_size_per_image=64, roi_batch_size_per_image=32)
    train_net.set_train(True)
    gt_boxes = np.zeros((1, 4, 4), np.float32)
    gt_boxes[0, :2] = [[10, 20, 70, 90], [60, 10, 150, 100]]
    gt_classes = np.array([[2, 0, 0, 0]], np.int32)
    gt_valid = np.array([[True, True, False, False]])
    args = [Tensor(image[None]), Tensor(np.array([[h, w]], np.float32)), Tensor(gt_boxes), Tensor(gt_classes),
            Tensor(gt_valid)]
    params = [p for p in train_net.trainable_params()]
    grad_fn = ms.value_and_grad(train_net, None, params, has_aux=True)
    (loss, terms), grads = grad_fn(*args)
    terms = terms.asnumpy()
    assert np.isfinite(terms).all() and (terms > 0).all()
    np.testing.assert_allclose(float(loss.asnumpy()), terms.sum(), rtol=1e-5)
    # Background-heavy sampling at init: the R-CNN cross entropy is near log(C + 1).
    assert abs(terms[2] - np.log(4.0)) < 0.5
    by_name = {p.name: g.asnumpy() for p, g in zip(params, grads)}
    assert all(np.isfinite(g).all() for g in by_name.values())
    assert np.abs(by_name["net.proposal_generator.rpn_head.objectness_logits.weight"]).sum() > 0
    assert np.abs(by_name["net.roi_heads.box_predictor.bbox_pred.weight"]).sum() > 0
    assert np.abs(by_name["net.affine_rcnn.weight"]).sum() > 0
    assert "net.backbone.res3.0.conv1.weight" not in by_name  # frozen by FREEZE_AT=3


class _FeatureProbe(nn.Cell):
    """Scalar probe of both decoupled branches: <rpn_features, r1> + <rcnn_features, r2>."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, image, r1, r2):
        rpn_features, rcnn_features = self.net.decoupled_features(image)
        return (rpn_features * r1).sum() + (rcnn_features * r2).sum()


def test_gradient_decoupling_scales_backbone_gradients():
    """RPN lambda 0 blocks the RPN branch; the R-CNN branch reaches res4 scaled by its lambda."""
    import mindspore as ms

    from src.models.defrcn.model import DeFRCN

    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(5)
    image = Tensor(rng.normal(size=(1, 3, 64, 64)).astype(np.float32))
    r1, r2 = (Tensor(rng.normal(size=(1, 64, 4, 4)).astype(np.float32)) for _ in range(2))
    grads = []
    for rpn_lam, rcnn_lam in ((0.0, 0.75), (0.0, 1.0)):
        net = DeFRCN(num_classes=2, depth=50, stem_out_channels=8, res2_out_channels=16,
                     rpn_backward_scale=rpn_lam, rcnn_backward_scale=rcnn_lam)
        _set_random_params(net.backbone, np.random.default_rng(6))  # identical weights in both nets
        params = [p for p in net.trainable_params() if p.name.startswith("backbone.res4.")]
        grad_fn = ms.grad(_FeatureProbe(net), None, params)
        grads.append([g.asnumpy() for g in grad_fn(image, r1, r2)])
    assert any(np.abs(g).max() > 0 for g in grads[1])
    for scaled, full in zip(*grads):
        np.testing.assert_allclose(scaled, 0.75 * full, rtol=1e-4, atol=1e-6 * np.abs(full).max())


def test_detector_postprocess_scales_clips_and_drops_empty():
    from src.models.defrcn.postprocess import DetectorPostprocess

    boxes = np.array([[[10, 20, 30, 40], [150, 10, 170, 30], [50, 5, 50, 6], [5, 5, 6, 6]]], np.float32)
    valid = np.array([[True, True, True, False]])
    out, keep = DetectorPostprocess()(Tensor(boxes), Tensor(valid), Tensor(np.array([[100, 160]], np.float32)),
                                      Tensor(np.array([[50, 320]], np.int32)))
    # x doubles (160 -> 320), y halves (100 -> 50); the second box is clipped at the original width, the
    # zero-width third box is dropped, the invalid fourth stays invalid.
    np.testing.assert_allclose(out.asnumpy()[0, 0], [20, 10, 60, 20], rtol=1e-6)
    np.testing.assert_allclose(out.asnumpy()[0, 1], [300, 5, 320, 15], rtol=1e-6)
    assert keep.asnumpy().tolist() == [[True, True, False, False]]
    assert (out.asnumpy()[0, 2:] == 0).all()
