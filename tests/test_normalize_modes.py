"""Pixel normalization modes of src.data.transforms (DETR ImageNet RGB vs detectron2 MSRA Caffe BGR)."""

import numpy as np
import pytest

from src.config import family_defaults
from src.data.dataset import SampleTransform
from src.data.transforms import Normalize, build_eval_transform, build_train_transform


def _image():
    return np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def test_caffe_bgr_is_bgr_0_255_minus_detectron2_mean():
    image = _image()
    boxes = np.array([[1, 2, 5, 4]], np.float32)
    out, out_boxes, _ = Normalize(normalize="caffe_bgr")(image, boxes, np.array([3], np.int32))
    expected = np.empty((3, 5, 7), np.float32)
    expected[0] = image[:, :, 2].astype(np.float32) - 103.53  # blue
    expected[1] = image[:, :, 1].astype(np.float32) - 116.28  # green
    expected[2] = image[:, :, 0].astype(np.float32) - 123.675  # red
    assert out.dtype == np.float32 and out.shape == (3, 5, 7)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
    # boxes are converted exactly as in the default mode: cxcywh over (w, h)
    np.testing.assert_allclose(out_boxes, [[3 / 7, 3 / 5, 4 / 7, 2 / 5]], rtol=1e-6)


def test_default_mode_is_unchanged_imagenet_rgb():
    image = _image()
    out, _, _ = Normalize()(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    expected = ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="normalize"):
        Normalize(normalize="bgr")


def test_builders_and_sample_transform_pass_the_mode_through():
    data_cfg = {**family_defaults("detr")["data"], "eval_size": 5, "eval_max_size": 100, "train_scales": [5],
                "train_max_size": 100,
                "crop_scales": [5], "crop_min_size": 3, "crop_max_size": 5}
    image = _image()
    no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
    caffe_cfg = dict(data_cfg, normalize="caffe_bgr")
    out, _, _ = build_eval_transform(caffe_cfg)(image, no_boxes, no_labels, None)
    np.testing.assert_allclose(out[0], image[:, :, 2].astype(np.float32) - 103.53, atol=1e-4)
    rng = np.random.default_rng(1)
    out, _, _ = build_train_transform(caffe_cfg)(image, no_boxes, no_labels, rng)
    assert out.min() >= -123.675 - 1e-3 and out.max() <= 255 - 103.53 + 1e-3
    assert SampleTransform(False, caffe_cfg).transform.transforms[-1].mode == "caffe_bgr"
    assert SampleTransform(False, data_cfg).transform.transforms[-1].mode == "imagenet_rgb"
