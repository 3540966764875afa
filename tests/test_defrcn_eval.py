"""DeFRCN evaluation: COCO overall/base/novel AP and VOC07 AP50 on real ground truth, PCB wiring, dropout off.

Expected values are computed here from the annotation files (pycocotools directly, an XML parse and the VOC07
rule by hand, the extractor's own features averaged here), not taken from the code under test.
"""

import json
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from mindspore import Tensor
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.config import load_config
from src.data.few_shot import COCO_NOVEL_IDS, VOC_NOVEL_CLASSES
from src.data.few_shot_sampling import write_coco_few_shot
from src.data.voc import VOC_CLASSES
from src.evaluation.evaluate import score_detections

TINY = "configs/defrcn/defrcn_tiny_base_coco.yaml"


def _batches(rows, slots=6):
    """(image_id, [(score, label, box), ...]) rows -> batches of 2 with padded slots and a padding row."""
    rows = list(rows) + [(-1, [])] * (len(rows) % 2)
    for i in range(0, len(rows), 2):
        ids = np.array([r[0] for r in rows[i:i + 2]], np.int64)
        scores = np.zeros((2, slots), np.float32)
        labels = np.full((2, slots), -1, np.int32)
        boxes = np.zeros((2, slots, 4), np.float32)
        for b, (_, dets) in enumerate(rows[i:i + 2]):
            for d, (score, label, box) in enumerate(dets):
                scores[b, d], labels[b, d], boxes[b, d] = score, label, box
        yield ids, scores, labels, boxes


def test_coco_novel_stats_match_pycocotools(shared_data, tmp_path):
    root = shared_data / "coco_tiny"
    cfg = load_config(TINY, ["data.classes=novel"])
    gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    rng = np.random.default_rng(0)
    rows, results = [], []
    for image_id in sorted(gt.getImgIds())[:30]:
        dets = []
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=False)):
            if ann["category_id"] not in COCO_NOVEL_IDS or len(dets) >= 5:
                continue
            x, y, w, h = np.asarray(ann["bbox"]) + rng.normal(0, 4, 4)
            dets.append((float(rng.uniform(0.1, 1.0)), ann["category_id"], [x, y, x + max(w, 1), y + max(h, 1)]))
        dets.append((0.3, int(rng.choice(COCO_NOVEL_IDS)), [5.0, 5.0, 60.0, 70.0]))  # mostly a false positive
        rows.append((image_id, dets))
        results += [{"image_id": image_id, "category_id": int(c), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                     "score": float(np.float32(s))} for s, c, b in dets]
    stats = score_detections(cfg, str(root), _batches(rows), tmp_path)

    ref = COCOeval(gt, gt.loadRes(results), "bbox")
    ref.params.imgIds = [r[0] for r in rows]
    ref.params.catIds = list(COCO_NOVEL_IDS)
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    assert 0.05 < ref.stats[0] < 0.95
    assert stats["nAP"] == pytest.approx(ref.stats[0], abs=1e-9)
    assert stats["nAP50"] == pytest.approx(ref.stats[1], abs=1e-9)
    assert stats["AP"] == pytest.approx(ref.stats[0], abs=1e-9)  # the detector's classes are the novel ones
    assert "bAP" not in stats  # an FSOD detector has no base classes
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_images"] == 30 and metrics["bbox"]["nAP75"] == pytest.approx(ref.stats[2], abs=1e-9)
    assert len(json.loads((tmp_path / "bbox_results.json").read_text())) == len(results)  # -1 slots dropped


def _voc_objects(devkit, file_id):
    root = ET.parse(devkit / "VOC2007" / "Annotations" / f"{file_id}.xml").getroot()
    objects = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        box = [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((obj.find("name").text, [box[0] - 1, box[1] - 1, box[2], box[3]],
                        obj.find("difficult") is not None and obj.find("difficult").text == "1"))
    return objects


def test_voc07_ap50_per_class_base_and_novel(shared_data, tmp_path):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    cfg = load_config(TINY, ["data.dataset=voc", "data.voc_split=1", "data.classes=all", "data.val_split=2007_test"])
    file_ids = (devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    rows, positives = [], {}
    for file_id in file_ids:
        dets = []
        for name, box, difficult in _voc_objects(devkit, file_id):
            positives[name] = positives.get(name, 0) + (not difficult)
            if name != "sofa":  # every object but the sofas is found exactly
                dets.append((0.9, VOC_CLASSES.index(name) + 1, box))
        if file_id == "000002":  # a car where there is none, ranked above every real car
            dets.append((0.95, VOC_CLASSES.index("car") + 1, [10.0, 10.0, 60.0, 50.0]))
        rows.append((int(file_id), dets))
    stats = score_detections(cfg, str(devkit), _batches(rows, slots=8), tmp_path)

    expected = {name: 1.0 for name in positives}
    expected["sofa"] = 0.0
    # One false positive first, then all n cars: the best precision at every recall level is n / (n + 1).
    expected["car"] = positives["car"] / (positives["car"] + 1)
    assert positives["car"] == 7 and positives["chair"] == 4  # two of the six chairs are difficult
    per_class = stats["per_class_AP50"]
    for name in VOC_CLASSES:
        if name in expected:
            assert per_class[name] == pytest.approx(expected[name], abs=1e-9), name
        else:
            assert np.isnan(per_class[name]), name
    novel = [expected[n] for n in VOC_NOVEL_CLASSES[1] if n in expected]
    base = [v for n, v in expected.items() if n not in VOC_NOVEL_CLASSES[1]]
    assert stats["nAP50"] == pytest.approx(np.mean(novel)) and stats["bAP50"] == pytest.approx(np.mean(base))
    assert stats["AP50"] == pytest.approx(np.mean(list(expected.values())))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metric"] == "voc07_11point" and metrics["num_images"] == 5
    assert metrics["bbox"]["per_class_AP50"]["bird"] is None


# ------------------------------------------------------------------------------------------------------ PCB
@pytest.fixture(scope="module")
def pcb_setup(shared_data, tmp_path_factory):
    """A 1-shot split over four coco_tiny train images with base and novel objects, and a tiny PCB extractor."""
    import mindspore as ms

    from src.models.defrcn.pcb import PCBFeatureExtractor

    tmp = tmp_path_factory.mktemp("pcb")
    root = shared_data / "coco_tiny"
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
    chosen = [i for i, cats in sorted(by_image.items()) if cats & set(COCO_NOVEL_IDS) and cats - set(COCO_NOVEL_IDS)]
    chosen = set(chosen[:4])
    small = {**data, "images": [im for im in data["images"] if im["id"] in chosen],
             "annotations": [a for a in data["annotations"] if a["image_id"] in chosen]}
    (tmp / "small.json").write_text(json.dumps(small))
    write_coco_few_shot(tmp / "small.json", tmp / "cocosplit", seeds=[0, 1], shots=[1])
    ms.set_seed(0)
    ms.save_checkpoint(PCBFeatureExtractor(depths=(1, 1, 1, 1)), str(tmp / "pcb.ckpt"))
    return root, tmp


def _pcb_cfg(tmp, classes, seed=0):
    return load_config(TINY, [f"data.classes={classes}", f"data.few_shot_root={tmp / 'cocosplit'}", "data.shot=1",
                              f"data.seed={seed}", "eval.pcb_enable=true", f"eval.pcb_model={tmp / 'pcb.ckpt'}"])


def _feature(extractor, path, box):
    from src.models.defrcn.pcb import pcb_preprocess

    image = cv2.imread(str(path))
    return extractor(Tensor(pcb_preprocess(image)), Tensor(np.asarray([box], np.float32))).asnumpy()[0].astype(
        np.float64)


def test_pcb_prototypes_calibration_gfsod_and_cache(pcb_setup, monkeypatch):
    from src.models.defrcn import pcb_eval
    from src.models.defrcn.pcb_eval import PCBCalibrator

    root, tmp = pcb_setup
    cache = tmp / "cache"
    calibrator = PCBCalibrator(_pcb_cfg(tmp, "all"), str(root), cache)
    extractor = calibrator.extractor
    all_ids = sorted(set(COCO_NOVEL_IDS) | {c["id"] for c in json.loads((tmp / "small.json").read_text())[
        "categories"]})
    assert len(all_ids) == 80

    # Prototype of class k = mean feature of the support boxes of class k, read here from the split files.
    features = {}
    for path in sorted((tmp / "cocosplit" / "seed0").glob("full_box_1shot_*_trainval.json")):
        split = json.loads(path.read_text())
        files = {im["id"]: im["file_name"] for im in split["images"]}
        for ann in split["annotations"]:
            x, y, w, h = ann["bbox"]
            features.setdefault(ann["category_id"], []).append(
                _feature(extractor, root / "train2017" / files[ann["image_id"]], [x, y, x + w, y + h]))
    protos = calibrator.prototypes
    assert set(np.flatnonzero(protos.counts)) == {all_ids.index(c) for c in features}
    for cat, feats in features.items():
        np.testing.assert_allclose(protos.vectors[all_ids.index(cat)], np.mean(feats, axis=0), rtol=2e-4, atol=1e-3)

    # gFSOD: a novel class is calibrated, base classes keep their scores, as do empty slots, classes without a
    # prototype and scores at or below the 0.05 floor.
    novel = next(c for c in COCO_NOVEL_IDS if c in features)
    base = next(c for c in features if c not in COCO_NOVEL_IDS)
    missing = next(c for c in COCO_NOVEL_IDS if c not in features)
    image = root / "val2017" / sorted(p.name for p in (root / "val2017").glob("*.jpg"))[0]
    boxes = np.array([[20, 30, 200, 220], [50, 40, 300, 260], [0, 0, 100, 90], [10, 10, 90, 80], [0, 0, 0, 0]],
                     np.float32)
    scores = np.array([0.8, 0.7, 0.6, 0.04, 0.0], np.float32)
    labels = np.array([novel, base, missing, novel, -1], np.int32)
    out = calibrator(image, scores, labels, boxes)
    proto = protos.vectors[all_ids.index(novel)].astype(np.float64)
    feat = _feature(extractor, image, boxes[0])
    cosine = feat @ proto / (np.linalg.norm(feat) * np.linalg.norm(proto))
    assert out[0] == pytest.approx(0.5 * 0.8 + 0.5 * cosine, abs=1e-4)
    np.testing.assert_array_equal(out[1:], scores[1:])

    # FSOD (novel-only detector): no class is excluded, indices are those of the 20 novel classes.
    fsod = PCBCalibrator(_pcb_cfg(tmp, "novel"), str(root), cache)
    assert fsod.excluded == () and len(fsod.prototypes.class_names) == 20
    np.testing.assert_allclose(fsod.prototypes.vectors[list(COCO_NOVEL_IDS).index(novel)], proto, rtol=1e-4, atol=1e-6)

    # The cache is per support split and seed: a rerun reads it, another seed builds its own file.
    def no_features(*args, **kwargs):
        raise AssertionError("prototypes were recomputed instead of read from the cache")

    monkeypatch.setattr(pcb_eval, "extract_support_features", no_features)
    again = PCBCalibrator(_pcb_cfg(tmp, "all"), str(root), cache)
    np.testing.assert_array_equal(again.prototypes.vectors, protos.vectors)
    monkeypatch.undo()
    PCBCalibrator(_pcb_cfg(tmp, "all", seed=1), str(root), cache)
    names = sorted(p.name for p in cache.glob("*.npz"))
    assert len(names) == 3 and sum("seed1" in n for n in names) == 1


def test_eval_switches_classifier_dropout_off(shared_data, tmp_path):
    """A network left in training mode is evaluated in eval mode: two runs agree exactly despite dropout 0.8."""
    from src.evaluation.evaluate import evaluate_model
    from src.models import build_model

    cfg = load_config(TINY, ["data.classes=novel", "model.cls_dropout=true"])
    detector = build_model(cfg)
    net = detector.inference_network
    runs = []
    for i in range(2):
        net.set_train(True)
        evaluate_model(net, cfg, str(shared_data / "coco_tiny"), None, str(tmp_path / "mr"), tmp_path / f"e{i}",
                       max_images=3)
        assert not net.training and not detector.network.training
        runs.append(json.loads((tmp_path / f"e{i}" / "bbox_results.json").read_text()))
    assert len(runs[0]) > 0 and runs[0] == runs[1]


def test_score_calibrator_hook_is_the_model_s_own(tmp_path):
    """The evaluation loop asks the model for its calibrator: none for DETR, none for DeFRCN without PCB, DeFRCN's
    PCB with eval.pcb_enable (whose missing extractor is then the one-line error naming eval.pcb_model)."""
    from src.models import build_score_calibrator

    detr = load_config("configs/detr/detr_r50.yaml")
    assert build_score_calibrator(detr, str(tmp_path), tmp_path) is None
    assert build_score_calibrator(load_config(TINY, ["eval.pcb_enable=false"]), str(tmp_path), tmp_path) is None
    with pytest.raises(ValueError, match="eval.pcb_model"):
        build_score_calibrator(load_config(TINY, ["eval.pcb_enable=true", "eval.pcb_model="]), str(tmp_path), tmp_path)
    assert not (tmp_path / "pcb_prototypes").exists()
