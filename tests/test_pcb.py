"""DeFRCN Prototypical Calibration Block (src/models/defrcn/pcb.py): calibration math on hand-made features,
the (0.05, 1.0] score rule, gFSOD exclusions, prototype/class alignment, the prototype cache, the extractor."""

import numpy as np
import pytest
from mindspore import Tensor

from src.data.few_shot import COCO_ALL_CLASSES, VOC_ALL_CLASSES
from src.models.defrcn.pcb import (
    PCBFeatureExtractor,
    PrototypeCacheError,
    Prototypes,
    build_calibration,
    build_prototypes,
    calibrate_image,
    coco_category_to_index,
    extract_support_features,
    extractor_fingerprint,
    gfsod_excluded_classes,
    load_prototype_cache,
    save_prototype_cache,
    support_label_map,
)

# DeFRCN clsid_filter's hard-coded COCO gFSOD exclusion list (0-based indices of the 60 base classes).
DEFRCN_COCO_EXCLUDE = [7, 9, 10, 11, 12, 13, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37,
                       38, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 59, 61, 63, 64, 65, 66, 67,
                       68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79]
NAMES3 = ("cat", "dog", "cow")


def _prototypes(vectors, names=NAMES3, counts=None):
    vectors = np.asarray(vectors, np.float32)
    counts = np.ones(len(names), np.int64) if counts is None else np.asarray(counts, np.int64)
    return Prototypes(vectors, counts, tuple(names), "toy", 0, "toy-extractor")


def _calibrate(prototypes, scores, labels, features, exclude=()):
    cell = build_calibration(prototypes, exclude)
    out = cell(Tensor(np.asarray(scores, np.float32)), Tensor(np.asarray(labels, np.int32)),
               Tensor(np.asarray(features, np.float32)))
    return out.asnumpy()


def test_cosine_calibration_by_hand():
    protos = _prototypes([[1, 1, 0], [0, 2, 0], [3, 0, 4]])
    features = [[1, 0, 0], [0, 5, 0], [4, 0, -3], [0, 0, 0], [2, 2, 0]]
    scores = [0.5, 0.8, 0.3, 0.9, 0.2]
    labels = [0, 1, 2, 2, 1]
    expected = [0.5 * 0.5 + 0.5 * (1 / np.sqrt(2)),   # cos 45 degrees
                0.5 * 0.8 + 0.5 * 1.0,                # same direction
                0.5 * 0.3 + 0.5 * 0.0,                # (4,0,-3).(3,0,4) = 0
                0.5 * 0.9 + 0.5 * 0.0,                # zero feature: similarity 0 (sklearn)
                0.5 * 0.2 + 0.5 * (1 / np.sqrt(2))]
    np.testing.assert_allclose(_calibrate(protos, scores, labels, features), expected, rtol=1e-6, atol=1e-7)


def test_score_range_is_open_below_closed_above():
    protos = _prototypes(np.eye(3))
    scores = [0.05, np.nextafter(np.float32(0.05), np.float32(1)), 0.5, 1.0, 1.5, 0.01, -1.0]
    features = np.tile([0.0, 1.0, 0.0], (len(scores), 1))  # cos with class 0 prototype is 0
    out = _calibrate(protos, scores, [0] * len(scores), features)
    s = np.asarray(scores, np.float32)
    expected = s.copy()
    expected[1:4] = 0.5 * s[1:4]  # (0.05, 1.0]: 0.05 itself and >1 are left alone
    np.testing.assert_array_equal(out, expected)


def test_excluded_and_unknown_classes_untouched():
    protos = _prototypes(np.eye(3), counts=[2, 1, 0])  # class 2 has no support box
    scores, features = [0.4] * 5, np.eye(3)[[0, 1, 2, 0, 0]]
    out = _calibrate(protos, scores, [0, 1, 2, -1, 7], features, exclude=(0,))
    np.testing.assert_allclose(out, [0.4, 0.5 * 0.4 + 0.5, 0.4, 0.4, 0.4], rtol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        build_calibration(protos, (3,))


def test_gfsod_exclusions_match_defrcn():
    assert list(gfsod_excluded_classes("coco")) == DEFRCN_COCO_EXCLUDE
    for split in (1, 2, 3):
        assert list(gfsod_excluded_classes("voc", split)) == list(range(15))
    assert COCO_ALL_CLASSES[0] == "person" and 0 not in gfsod_excluded_classes("coco")  # novel
    with pytest.raises(ValueError):
        gfsod_excluded_classes("voc")


def test_prototype_of_class_k_comes_from_class_k_boxes():
    detector = VOC_ALL_CLASSES[1]  # split 1: 15 base then bird, bus, cow, motorbike, sofa
    support = tuple(reversed(detector))  # a support label space in another order
    rng = np.random.default_rng(0)
    support_labels = np.repeat(np.arange(20), 3)
    mapping = support_label_map(support, detector)
    labels = mapping[support_labels]
    # Support features of detector class k point along axis k (scaled differently per box).
    features = np.eye(20)[labels] * rng.uniform(1, 3, (labels.size, 1))
    protos = build_prototypes(features, labels, detector, "voc_split1_1shot", 0, "toy")
    assert protos.vectors.shape == (20, 20) and list(protos.counts) == [3] * 20
    for k, name in enumerate(detector):
        assert np.argmax(protos.vectors[k]) == k, name
        np.testing.assert_allclose(protos.vectors[k, k], features[labels == k, k].mean(), rtol=1e-6)
    assert detector.index("bird") == 15 and mapping[support.index("bird")] == 15
    # Calibration uses the same index: a bird detection with a bird-like feature gets cosine 1.
    out = _calibrate(protos, [0.3, 0.3], [15, 16], np.eye(20)[[15, 15]])
    np.testing.assert_allclose(out, [0.65, 0.15], rtol=1e-6)
    np.testing.assert_array_equal(coco_category_to_index([1, 8, 90], COCO_ALL_CLASSES), [0, 7, 79])
    with pytest.raises(ValueError, match="not detector classes"):
        support_label_map(("bird", "zebra"), detector)


def test_cache_round_trip_and_rejection(tmp_path):
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    protos = build_prototypes(features, [0, 2, 2, 0], NAMES3, "coco14_trainval_all_10shot", 3, "pcb-resnet:abc")
    path = tmp_path / "cache" / "protos.npz"
    save_prototype_cache(path, protos)
    assert sorted(p.name for p in path.parent.iterdir()) == ["protos.npz"]
    back = load_prototype_cache(path, "coco14_trainval_all_10shot", 3, "pcb-resnet:abc", NAMES3)
    np.testing.assert_array_equal(back.vectors, [[4.5, 5.5, 6.5], [0, 0, 0], [4.5, 5.5, 6.5]])
    np.testing.assert_array_equal(back.counts, [2, 0, 2])
    assert (back.split, back.seed, back.extractor_id, back.class_names, back.feature_dim) == (
        "coco14_trainval_all_10shot", 3, "pcb-resnet:abc", NAMES3, 3)
    wrong = [("coco14_trainval_all_5shot", 3, "pcb-resnet:abc", NAMES3, "split"),
             ("coco14_trainval_all_10shot", 4, "pcb-resnet:abc", NAMES3, "seed"),
             ("coco14_trainval_all_10shot", 3, "pcb-resnet:xyz", NAMES3, "feature extractor"),
             ("coco14_trainval_all_10shot", 3, "pcb-resnet:abc", NAMES3[::-1], "class list")]
    for split, seed, extractor, names, field in wrong:
        with pytest.raises(PrototypeCacheError, match=f"protos.npz.*{field}"):
            load_prototype_cache(path, split, seed, extractor, names)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PrototypeCacheError, match="bad.npz"):
        load_prototype_cache(tmp_path / "bad.npz", "s", 0, "e", NAMES3)


def test_extractor_whole_image_box_equals_classifier_logits():
    net = PCBFeatureExtractor(num_logits=10, depths=(1, 1, 1, 1))
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    # A 32x32 image has a 1x1 layer4 map; every aligned sample of the whole-image box lands on it, so the PCB
    # feature is the classifier's logit vector fc(avgpool(layer4)).
    pooled = net.net(Tensor(image)).asnumpy().reshape(1, -1)
    logits = pooled @ net.net.fc.weight.asnumpy().T + net.net.fc.bias.asnumpy()
    assert np.abs(logits).max() > 1e-3
    boxes = np.asarray([[0, 0, 32, 32]], np.float32)
    feats, labels = extract_support_features(net, [((rng.uniform(0, 255, (32, 32, 3))).astype(np.uint8), boxes,
                                                    [1])])
    assert feats.shape == (1, 10) and list(labels) == [1]
    out = net(Tensor(image), Tensor(boxes)).asnumpy()
    np.testing.assert_allclose(out, logits, rtol=1e-4, atol=1e-5)
    fingerprint = extractor_fingerprint(net)
    assert fingerprint.startswith("pcb-resnet:") and fingerprint == extractor_fingerprint(net)
    assert "net.fc.weight" in {p.name for p in net.get_parameters()}


def test_calibrate_image_uses_the_prototype_of_the_predicted_class():
    net = PCBFeatureExtractor(num_logits=4, depths=(1, 1, 1, 1))
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (64, 96, 3)).astype(np.uint8)
    boxes = np.asarray([[0, 0, 40, 40], [30, 10, 90, 60], [0, 0, 0, 0]], np.float32)
    feats, _ = extract_support_features(net, [(image, boxes[:2], [0, 1])])
    protos = build_prototypes(feats, [0, 1], ("a", "b"), "toy", 0, extractor_fingerprint(net))
    # Each box compared with its own class prototype (cosine 1) versus the other class's.
    own = calibrate_image(net, build_calibration(protos), image, boxes, [0.4, 0.6, 0.9], [0, 1, -1])
    np.testing.assert_allclose(own, [0.7, 0.8, 0.9], rtol=1e-5)
    cos = feats[0] @ feats[1] / np.linalg.norm(feats[0]) / np.linalg.norm(feats[1])
    assert cos < 0.999  # otherwise swapping the classes could not be told apart
    swapped = calibrate_image(net, build_calibration(protos), image, boxes, [0.4, 0.6, 0.9], [1, 0, -1])
    np.testing.assert_allclose(swapped, [0.2 + 0.5 * cos, 0.3 + 0.5 * cos, 0.9], rtol=1e-4)
