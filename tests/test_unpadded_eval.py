"""Unpadded evaluation (``eval.unpadded``, ``src/evaluation/unpadded.py``) for Focus-DETR and DeFRCN.

The evaluation loop of ``evaluate_model`` runs three real coco_tiny images of three sizes through each tiny config
(random weights). The reference is the same network run eagerly (PyNative, nothing compiled) on each image alone at
its own size, the setting in which the ports were compared with detrex and detectron2 / DeFRCN (issue 12): the
outputs must agree within 1e-4 while the loop compiles a fixed number of graphs (Focus-DETR 1: backbone + neck;
DeFRCN 4: trunk, RPN head, box head, inference). An image padded to its bucket must give different outputs, so the
comparison can tell padded from unpadded evaluation (checked on one image). ``infer.py`` with ``eval.unpadded`` is
checked the same way on the tiny DETR. DETR-R50's unpadded evaluation is compared with transformers in
tests/test_detr_parity.py.
"""

import json

import mindspore as ms
import mindspore.graph.api as graph_api
import numpy as np
import pytest

from src.config import ConfigError, load_config
from src.data.dataset import create_dataset, select_bucket
from src.evaluation.evaluate import _predict
from src.models import build_model
from src.runtime import pynative_mode

CASES = {
    "focus_detr": ("configs/focus_detr/focus_detr_tiny.yaml", ["eval.unpadded=true"], 1),
    # A low score threshold, so the random tiny DeFRCN returns detections to compare.
    "defrcn": ("configs/defrcn/defrcn_tiny_base_coco.yaml",
               ["eval.unpadded=true", "eval.batch_size=1", "model.score_thresh=0.001"], 4),
}
NUM_IMAGES = 3


def _unpadded_inputs(cfg, root, mindrecord):
    """``{image_id: (image [1, 3, h, w], orig_size [1, 2])}`` of the first images, as the evaluation reads them."""
    dataset = create_dataset(root, {**cfg["data"], "eval_pad_buckets": None}, "val", mindrecord, 1,
                             max_images=NUM_IMAGES)
    inputs = {}
    for image, mask, image_id, orig_size in dataset.create_tuple_iterator(
            columns=["image", "mask", "image_id", "orig_size"], num_epochs=1):
        assert not mask.asnumpy().any()
        inputs[int(image_id.asnumpy()[0])] = (image.asnumpy(), orig_size.asnumpy())
    return inputs


def _eager(net, image, mask, orig_size):
    with pynative_mode():
        return [o.asnumpy()[0] for o in net(ms.Tensor(image), ms.Tensor(mask), ms.Tensor(orig_size))]


@pytest.mark.parametrize("name", CASES)
def test_default_eval_path_is_unpadded_with_bounded_compiles(name, shared_data, tmp_path):
    config, overrides, graphs = CASES[name]
    cfg = load_config(config, overrides)
    assert cfg["eval"]["unpadded"] is True
    root, mindrecord = str(shared_data / "coco_tiny"), str(tmp_path / "mr")
    ms.set_seed(0)
    net = build_model(cfg).inference_network
    net.set_train(False)
    inputs = _unpadded_inputs(cfg, root, mindrecord)
    assert len({image.shape for image, _ in inputs.values()}) == NUM_IMAGES  # three sizes
    expected = {}
    for image_id, (image, orig_size) in inputs.items():
        expected[image_id] = _eager(net, image, np.zeros((1,) + image.shape[2:], bool), orig_size)
    # The first image padded to its bucket, as eval.unpadded=false runs it.
    padded_id, (image, orig_size) = next(iter(inputs.items()))
    h, w = image.shape[2:]
    bucket_h, bucket_w = select_bucket([(h, w)], cfg["data"]["eval_pad_buckets"])
    assert (bucket_h, bucket_w) != (h, w)
    big = np.zeros((1, 3, bucket_h, bucket_w), np.float32)
    big[:, :, :h, :w] = image
    mask = np.ones((1, bucket_h, bucket_w), bool)
    mask[:, :h, :w] = False
    pad_scores, _, pad_boxes = _eager(net, big, mask, orig_size)

    before = len(graph_api.ms_compile_cache)
    predictions = list(_predict(net, cfg, root, mindrecord, NUM_IMAGES))
    assert len(graph_api.ms_compile_cache) - before == graphs

    assert sorted(int(ids[0]) for ids, *_ in predictions) == sorted(inputs)
    for image_ids, scores, labels, boxes in predictions:
        ref_scores, ref_labels, ref_boxes = expected[int(image_ids[0])]
        assert (ref_labels >= 0).sum() > 0 and ref_scores.std() > 0  # a non-degenerate reference
        np.testing.assert_allclose(scores[0], ref_scores, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(labels[0], ref_labels)
        np.testing.assert_allclose(boxes[0], ref_boxes, atol=1e-4 * float(inputs[int(image_ids[0])][1].max()),
                                   rtol=0)
        if int(image_ids[0]) == padded_id:
            assert max(np.abs(pad_scores - scores[0]).max(), np.abs(pad_boxes - boxes[0]).max()) > 1e-3


def test_unpadded_needs_batch_one():
    cfg = load_config("configs/defrcn/defrcn_tiny_base_coco.yaml", ["eval.unpadded=true"])
    assert cfg["eval"]["batch_size"] == 2
    with pytest.raises(ConfigError, match="eval.batch_size is 2"):
        next(_predict(None, cfg, "unused", "unused", None))


def test_infer_runs_each_image_at_its_own_size(shared_data, tmp_path):
    """infer.py with eval.unpadded (the tiny DETR, compiled once) writes the detections of the network run eagerly
    on each image alone at its resized size; a portrait and a landscape image."""
    import infer
    from src.checkpoint import save_checkpoint
    from src.data.transforms import build_eval_transform
    from src.evaluation.predict import load_image
    from src.models import build_inference_net

    config = "configs/detr/detr_tiny.yaml"
    cfg = load_config(config, ["eval.unpadded=true"])
    ms.set_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.ckpt", build_model(cfg).network)
    paths = [shared_data / "coco_tiny" / "val2017" / name for name in ("000000005001.jpg", "000000010764.jpg")]
    infer.main(["--config", config, "--checkpoint", str(checkpoint), "--images", *map(str, paths), "--output_dir",
                str(tmp_path / "out"), "--score_threshold", "0", "--set", "eval.unpadded=true"])

    net = build_inference_net(cfg, checkpoint)
    shapes = set()
    for path in paths:
        rgb = load_image(path)
        image = build_eval_transform(cfg["data"])(rgb, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), None)[0]
        shapes.add(image.shape)
        scores, _, boxes = _eager(net, image[None], np.zeros((1,) + image.shape[1:], bool),
                                  np.array([rgb.shape[:2]], np.int32))
        written = json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())
        assert len(written) == len(scores)
        # Random weights give near-equal scores, so each written detection is matched to its reference by box.
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        got = np.array([d["bbox"] for d in written])
        match = np.abs(got[:, None, :] - xywh[None]).max(axis=-1).argmin(axis=1)
        assert len(set(match.tolist())) == len(scores)
        np.testing.assert_allclose(got, xywh[match], atol=1e-4 * max(rgb.shape), rtol=0)
        np.testing.assert_allclose([d["score"] for d in written], scores[match], atol=1e-4, rtol=0)
        assert np.all(np.diff([d["score"] for d in written]) <= 0)
    assert len(shapes) == 2
