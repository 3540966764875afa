"""Transforms and batch padding checked against hand computations and the definitions in detr."""

import numpy as np
import pytest
from PIL import Image

from src.config import family_defaults
from src.data.dataset import BatchPadder, select_bucket
from src.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    build_eval_transform,
    crop,
    decode_image,
    get_size_with_aspect_ratio,
    hflip,
    prepare_target,
    resize,
)


def reference_size(h, w, size, max_size):
    """detr's rule written out: shrink the target if the long side would pass max_size, truncate the long."""
    short, long = min(h, w), max(h, w)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return h, w
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


@pytest.mark.parametrize("hw,size,max_size,expected", [
    ((480, 640), 800, 1333, (800, 1066)),  # 800 * 640 / 480 = 1066.67, truncated
    ((640, 480), 800, 1333, (1066, 800)),
    ((427, 640), 800, 1333, (800, 1199)),
    ((100, 1000), 800, 1333, (133, 1330)),  # long side capped: size = round(133.3) = 133
    ((800, 1200), 800, 1333, (800, 1200)),  # short side already the target
    ((500, 500), 480, None, (480, 480)),
])
def test_size_with_aspect_ratio(hw, size, max_size, expected):
    assert reference_size(*hw, size, max_size) == expected
    assert get_size_with_aspect_ratio(hw, size, max_size) == expected


def test_size_with_aspect_ratio_matches_definition_on_many_sizes():
    rng = np.random.default_rng(0)
    for h, w in rng.integers(50, 2000, size=(200, 2)):
        for size in (480, 800):
            assert get_size_with_aspect_ratio((int(h), int(w)), size, 1333) == reference_size(h, w, size, 1333)


def test_prepare_target_drops_crowd_converts_and_clamps():
    boxes = np.array([[10, 20, 30, 40], [5, 5, 10, 10], [90, 70, 20, 20], [-5, 10, 3, 10]], np.float32)
    boxes, labels = prepare_target(boxes, np.array([1, 2, 3, 4]), np.array([0, 1, 0, 0]), height=80, width=100)
    # crowd box 2 dropped; box 3 clamped to (90, 70, 100, 80); box 4 clamps to x 0..0 (zero width), dropped
    np.testing.assert_array_equal(boxes, [[10, 20, 40, 60], [90, 70, 100, 80]])
    np.testing.assert_array_equal(labels, [1, 3])
    assert boxes.dtype == np.float32 and labels.dtype == np.int32


def test_hflip_boxes_and_pixels():
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, 10] = 255
    flipped, boxes = hflip(image, np.array([[10, 20, 30, 40]], np.float32))
    np.testing.assert_array_equal(boxes, [[70, 20, 90, 40]])
    assert flipped[:, 89].min() == 255 and flipped.sum() == image.sum()


def test_resize_scales_boxes_by_actual_ratio():
    image = np.zeros((480, 640, 3), np.uint8)
    out, boxes = resize(image, np.array([[64, 48, 320, 240]], np.float32), 800, 1333)
    assert out.shape == (800, 1066, 3)
    np.testing.assert_allclose(boxes, [[64 * 1066 / 640, 48 * 800 / 480, 320 * 1066 / 640, 240 * 800 / 480]],
                               rtol=1e-6)


def test_crop_shifts_clamps_and_drops():
    image = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(80, 100, 3)
    boxes = np.array([[0, 0, 30, 25], [30, 15, 50, 30], [70, 50, 90, 60]], np.float32)
    out, kept, labels = crop(image, boxes, np.array([1, 2, 3], np.int32), (10, 20, 30, 40))
    np.testing.assert_array_equal(out, image[10:40, 20:60])
    # shifted by (-20, -10), clamped to [0, 40] x [0, 30]; the third lies outside the region
    np.testing.assert_array_equal(kept, [[0, 0, 10, 15], [10, 5, 30, 20]])
    np.testing.assert_array_equal(labels, [1, 2])


def test_normalize_pixels_and_boxes():
    image = np.zeros((80, 100, 3), np.uint8)
    image[..., 0], image[..., 2] = 255, 51
    out, boxes, _ = Normalize()(image, np.array([[10, 20, 30, 60]], np.float32), np.array([1]))
    assert out.shape == (3, 80, 100) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225],
                               rtol=1e-5)
    np.testing.assert_allclose(boxes, [[20 / 100, 40 / 80, 20 / 100, 40 / 80]], rtol=1e-6)


def _painted(h, w, box):
    image = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = 255
    return image


def _bright_extent(image):
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_random_pipeline_keeps_boxes_on_the_painted_object(seed):
    # The box follows the pixels through flip, resize and crop; the crop keeps the object whole-or-partial
    # and the box must then match the visible part.
    pipeline = Compose([
        RandomHorizontalFlip(),
        RandomSelect(RandomResize([96, 128], max_size=200),
                     Compose([RandomResize([100, 120]), RandomSizeCrop(60, 90), RandomResize([96, 128], 200)])),
    ])
    box = (40, 30, 90, 70)
    image, boxes, labels = pipeline(_painted(100, 150, box), np.array([box], np.float32), np.array([5], np.int32),
                                    np.random.default_rng(seed))
    if len(boxes) == 0:
        assert (image[..., 0] > 127).sum() == 0, "box dropped although the object is visible"
        return
    np.testing.assert_array_equal(labels, [5])
    np.testing.assert_allclose(boxes[0], _bright_extent(image), atol=1.5)


def test_random_size_crop_bounds_and_reproducibility():
    image = np.zeros((200, 300, 3), np.uint8)
    boxes = np.zeros((0, 4), np.float32)
    labels = np.zeros((0,), np.int32)
    sizes = set()
    for seed in range(30):
        out = RandomSizeCrop(50, 120)(image, boxes, labels, np.random.default_rng(seed))[0]
        assert 50 <= out.shape[0] <= 120 and 50 <= out.shape[1] <= 120
        sizes.add(out.shape[:2])
        again = RandomSizeCrop(50, 120)(image, boxes, labels, np.random.default_rng(seed))[0]
        assert again.shape == out.shape
    assert len(sizes) > 10


def test_eval_transform_size():
    image = np.zeros((427, 640, 3), np.uint8)
    data_cfg = {**family_defaults("detr")["data"], "eval_size": 800, "eval_max_size": 1333}
    out, _, _ = build_eval_transform(data_cfg)(
        image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), None)
    assert out.shape == (3, 800, 1199)


def test_batch_padding_shapes_and_mask():
    images = [np.ones((3, 50, 60), np.float32), 2 * np.ones((3, 70, 40), np.float32)]
    boxes = [np.array([[0.5, 0.5, 0.2, 0.2]], np.float32), np.zeros((0, 4), np.float32)]
    labels = [np.array([17], np.int32), np.zeros((0,), np.int32)]
    padder = BatchPadder([[100, 100], [80, 64], [64, 80]], max_boxes=3)
    image, mask, tgt_boxes, tgt_labels, tgt_valid, ids, orig, img = padder(
        images, boxes, labels, [np.int64(5), np.int64(9)], [np.array([500, 600], np.int32)] * 2,
        [np.array([50, 60], np.int32), np.array([70, 40], np.int32)])
    assert image.shape == (2, 3, 80, 64) and mask.shape == (2, 80, 64)  # smallest bucket holding 70 x 60
    assert image[0, :, :50, :60].min() == 1 and image[0, :, 50:].max() == 0
    assert image[0, :, :, 60:].max() == 0
    assert mask[0, :50, :60].sum() == 0 and mask[0].sum() == 80 * 64 - 50 * 60
    assert mask[1, :70, :40].sum() == 0 and mask[1].sum() == 80 * 64 - 70 * 40
    assert tgt_boxes.shape == (2, 3, 4) and tgt_labels.dtype == np.int32 and tgt_valid.dtype == np.bool_
    np.testing.assert_array_equal(tgt_valid, [[True, False, False], [False, False, False]])
    np.testing.assert_array_equal(tgt_labels, [[17, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(tgt_boxes[0, 0], boxes[0][0])
    assert tgt_boxes[0, 1:].max() == 0
    np.testing.assert_array_equal(ids, [5, 9])
    np.testing.assert_array_equal(img, [[50, 60], [70, 40]])
    np.testing.assert_array_equal(orig, [[500, 600], [500, 600]])


def test_batch_padding_truncates_boxes_and_fills_eval_batch():
    padder = BatchPadder([[64, 64]], max_boxes=2, batch_size=3)
    boxes = np.array([[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1], [0.3, 0.3, 0.1, 0.1]], np.float32)
    out = padder([np.zeros((3, 32, 32), np.float32)], [boxes], [np.array([1, 2, 3], np.int32)], [np.int64(4)],
                 [np.array([32, 32], np.int32)], [np.array([32, 32], np.int32)])
    image, mask, tgt_boxes, tgt_labels, tgt_valid, ids = out[:6]
    assert padder.truncated_images == 1
    np.testing.assert_array_equal(tgt_boxes[0], boxes[:2])
    np.testing.assert_array_equal(tgt_labels[0], [1, 2])
    assert image.shape == (3, 3, 64, 64)
    np.testing.assert_array_equal(ids, [4, -1, -1])
    assert not tgt_valid[1:].any() and not mask[1:].any()


def test_bucket_selection_errors_name_the_image():
    assert select_bucket([(50, 60)], [[100, 100], [64, 64]]) == (64, 64)
    with pytest.raises(ValueError, match=r"image id 42 resized to 90x30"):
        select_bucket([(10, 10), (90, 30)], [[64, 64], [80, 80]], image_ids=[7, 42])
    with pytest.raises(ValueError, match="fits no single pad bucket"):
        select_bucket([(90, 10), (10, 90)], [[100, 20], [20, 100]], image_ids=[1, 2])


def test_decode_matches_detr_pil_loading_on_coco(shared_data):
    # detr loads with PIL's Image.open(...).convert("RGB"); identical pixels keep evaluation parity.
    for path in sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[:40]:
        with Image.open(path) as im:
            expected = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(decode_image(path.read_bytes()), expected, err_msg=str(path))
