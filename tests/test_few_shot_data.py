"""Few-shot split readers and the VOC reader on the real files under ../shared/data."""

import json
import re

import numpy as np
import pytest

from src.data.few_shot import (
    COCO_BASE_IDS,
    COCO_NOVEL_CLASSES,
    COCO_NOVEL_IDS,
    VOC_ALL_CLASSES,
    VOC_BASE_CLASSES,
    VOC_NOVEL_CLASSES,
    FewShotSplitError,
    coco_split_file,
    load_coco_few_shot,
    load_coco_few_shot_files,
    load_voc_few_shot,
    read_voc_split_list,
    voc_split_file,
)
from src.data.voc import VOC_CLASSES, load_voc_split, parse_voc_xml, year_of_file_id

SHOTS = (1, 2, 3, 5, 10)
LINE = re.compile(r"^datasets/VOC(2007|2012)/JPEGImages/(\d{6}|\d{4}_\d{6})\.jpg$")


# ----------------------------------------------------------------------------------------------- VOC splits
def test_every_voc_split_file_parses(shared_data):
    root = shared_data / "vocsplit"
    seeds = [0] + sorted(int(p.name[4:]) for p in root.glob("seed*"))
    assert seeds == list(range(30))
    for seed in seeds:
        for cls in VOC_CLASSES:
            for shot in SHOTS:
                path = voc_split_file(root, cls, shot, seed)
                ids = read_voc_split_list(path)
                lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
                assert len(ids) == len(lines) and 1 <= len(ids) <= shot, path
                for file_id, line in zip(ids, lines):
                    match = LINE.match(line.strip())
                    assert match, line
                    # The year in the listed path must agree with the TFA underscore rule the loader uses.
                    assert year_of_file_id(file_id) == int(match.group(1)) and file_id == match.group(2)
    # Every file in the folder is one of the (seed, class, shot) triples checked above.
    assert len(list(root.rglob("box_*shot_*_train.txt"))) == 30 * 20 * 5


def test_voc_split_file_missing_is_an_error(tmp_path):
    with pytest.raises(FewShotSplitError):
        read_voc_split_list(voc_split_file(tmp_path, "bird", 1, 3))


def test_voc_class_splits():
    # Novel classes per split as published by TFA (Wang et al. 2020), typed from the paper.
    assert {k: set(v) for k, v in VOC_NOVEL_CLASSES.items()} == {
        1: {"bird", "bus", "cow", "motorbike", "sofa"}, 2: {"aeroplane", "bottle", "cow", "horse", "sofa"},
        3: {"boat", "cat", "motorbike", "sheep", "sofa"}}
    for split in (1, 2, 3):
        assert len(VOC_BASE_CLASSES[split]) == 15 and not set(VOC_BASE_CLASSES[split]) & set(VOC_NOVEL_CLASSES[split])
        assert sorted(VOC_ALL_CLASSES[split]) == sorted(VOC_CLASSES)
        assert VOC_ALL_CLASSES[split][15:] == VOC_NOVEL_CLASSES[split]
    assert VOC_ALL_CLASSES[1][:3] == ("aeroplane", "bicycle", "boat")


def test_coco_class_splits():
    assert len(COCO_BASE_IDS) == 60 and len(COCO_NOVEL_IDS) == 20 and not set(COCO_BASE_IDS) & set(COCO_NOVEL_IDS)
    # The 20 novel COCO classes are the 20 VOC classes under their COCO names.
    coco_name = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
                 "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}
    assert set(COCO_NOVEL_CLASSES) == {coco_name.get(c, c) for c in VOC_CLASSES}


# ----------------------------------------------------------------------------------------------- COCO splits
CLASSES = ("bus", "car", "cat", "dog")


def test_coco_few_shot_counts_match_upstream(shared_data):
    folder = shared_data / "few_shot_coco_split"
    files = [folder / f"{c}.json" for c in ("bus", "car", "cat", "dog", "person")]
    records = load_coco_few_shot_files(files, CLASSES)
    # mmfewshot's test: the five files with classes (bus, car, cat, dog) give 26 images and 40 boxes.
    assert len(records) == 26
    assert sum(len(r.boxes) for r in records) == 40
    # The same numbers straight from the JSON: person annotations are not selected, so person-only images go.
    image_ids, boxes = set(), 0
    for c in CLASSES:
        data = json.loads((folder / f"{c}.json").read_text())
        name_of = {cat["id"]: cat["name"] for cat in data["categories"]}
        for ann in data["annotations"]:
            if name_of[ann["category_id"]] in CLASSES:
                image_ids.add(ann["image_id"])
                boxes += 1
    assert {r.image_id for r in records} == image_ids and boxes == 40
    for r in records:
        assert r.boxes.shape[1] == 4 and (r.boxes[:, 2:] > r.boxes[:, :2]).all()
        assert [CLASSES[i] for i in r.labels] == [COCO_NAME[c] for c in r.category_ids]


COCO_NAME = {6: "bus", 3: "car", 17: "cat", 18: "dog"}  # COCO ids of the four classes


def test_coco_few_shot_merges_per_image(tmp_path, shared_data):
    folder = shared_data / "few_shot_coco_split"
    bus = json.loads((folder / "bus.json").read_text())
    # A second class file sharing one image with the bus file: its annotations join that image's record.
    shared_img = bus["images"][0]
    car = json.loads((folder / "car.json").read_text())
    car_ann = dict(car["annotations"][0], image_id=shared_img["id"])
    merged_file = tmp_path / "car_on_bus.json"
    merged_file.write_text(json.dumps(dict(car, images=[shared_img], annotations=[car_ann])))
    records = load_coco_few_shot_files([folder / "bus.json", merged_file, folder / "bus.json"], ("bus", "car"))
    assert len(records) == len(bus["images"])
    rec = next(r for r in records if r.image_id == shared_img["id"])
    n_bus = sum(a["image_id"] == shared_img["id"] for a in bus["annotations"])
    assert list(rec.labels) == [0] * n_bus + [1]  # the repeated bus file adds nothing
    x, y, w, h = car_ann["bbox"]
    np.testing.assert_allclose(rec.boxes[-1], [x, y, x + w, y + h], rtol=1e-6)


def test_seed0_in_seed0_folder_wins_over_the_root_for_coco_and_voc(tmp_path):
    """Both layouts present (a TFA download plus a fresh prepare_few_shot_split.py draw): both readers take
    ``seed0/``, so COCO and VOC never read different seed-0 draws."""
    (tmp_path / "seed0").mkdir()
    for name in ("full_box_1shot_bus_trainval.json", "box_1shot_bus_train.txt"):
        (tmp_path / name).write_text("")
        (tmp_path / "seed0" / name).write_text("")
    assert coco_split_file(tmp_path, "bus", 1, 0) == tmp_path / "seed0" / "full_box_1shot_bus_trainval.json"
    assert voc_split_file(tmp_path, "bus", 1, 0) == tmp_path / "seed0" / "box_1shot_bus_train.txt"
    assert voc_split_file(tmp_path, "car", 1, 0) == tmp_path / "box_1shot_car_train.txt"  # neither: TFA's place


@pytest.mark.parametrize("layout", ["root", "seed0"])
def test_coco_split_layouts(tmp_path, shared_data, layout):
    folder = shared_data / "few_shot_coco_split"
    seed0 = tmp_path if layout == "root" else tmp_path / "seed0"
    (tmp_path / "seed3").mkdir()
    seed0.mkdir(exist_ok=True)
    for c in CLASSES:
        (seed0 / f"full_box_10shot_{c}_trainval.json").symlink_to(folder / f"{c}.json")
        (tmp_path / "seed3" / f"full_box_10shot_{c}_trainval.json").symlink_to(folder / f"{c}.json")
    assert coco_split_file(tmp_path, "bus", 10, 0).parent == seed0
    assert len(load_coco_few_shot(tmp_path, CLASSES, 10, 0)) == 26
    assert len(load_coco_few_shot(tmp_path, CLASSES, 10, 3)) == 26
    with pytest.raises(FewShotSplitError):
        coco_split_file(tmp_path, "bus", 5, 0)


# ----------------------------------------------------------------------------------------------- VOC reader
def _raw_objects(xml_text):
    """(name, difficult, xmin, ymin, xmax, ymax) per top-level object, by regex (independent of ElementTree)."""
    out = []
    for block in re.findall(r"<object>(.*?)</object>", xml_text, flags=re.S):
        block = re.sub(r"<part>.*?</part>", "", block, flags=re.S)
        name = re.search(r"<name>(.*?)</name>", block).group(1).strip()
        diff = int(re.search(r"<difficult>(\d)</difficult>", block).group(1))
        coords = [float(re.search(rf"<{t}>([\d.]+)</{t}>", block).group(1)) for t in ("xmin", "ymin", "xmax", "ymax")]
        out.append((name, diff, *coords))
    return out


def test_voc_reader_on_voc_mini(shared_data):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    totals = {}
    for year in (2007, 2012):
        for split in ("trainval", "test"):
            records = load_voc_split(devkit, year, split)
            listed = (devkit / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
            assert [r.file_id for r in records] == listed
            n_obj = n_diff = 0
            for rec in records:
                raw = _raw_objects((devkit / f"VOC{year}" / "Annotations" / f"{rec.file_id}.xml").read_text())
                assert [VOC_CLASSES[i] for i in rec.labels] == [o[0] for o in raw]
                assert rec.difficult.tolist() == [bool(o[1]) for o in raw]
                expected = np.array([[o[2] - 1, o[3] - 1, o[4], o[5]] for o in raw], np.float32).reshape(-1, 4)
                np.testing.assert_array_equal(rec.boxes, expected)
                assert rec.file_name.endswith(f"VOC{year}/JPEGImages/{rec.file_id}.jpg")
                n_obj += len(raw)
                n_diff += sum(o[1] for o in raw)
            totals[(year, split)] = (n_obj, n_diff)
    # README: 17 + 11 objects; the two difficult objects are chairs in VOC2007 000005 (checked by reading it).
    assert totals[(2007, "trainval")][0] == 17 and totals[(2012, "trainval")][0] == 11
    assert totals[(2007, "trainval")][1] + totals[(2012, "trainval")][1] == 2
    rec = parse_voc_xml(devkit / "VOC2007" / "Annotations" / "000001.xml")
    np.testing.assert_array_equal(rec.boxes, [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert (rec.height, rec.width) == (500, 353)
    hard = parse_voc_xml(devkit / "VOC2007" / "Annotations" / "000005.xml")
    assert [VOC_CLASSES[i] for i in hard.labels[hard.difficult]] == ["chair", "chair"]
    easy = parse_voc_xml(devkit / "VOC2007" / "Annotations" / "000005.xml", keep_difficult=False)
    assert len(easy.labels) == len(hard.labels) - 2 and not easy.difficult.any()
    only_chairs = parse_voc_xml(devkit / "VOC2007" / "Annotations" / "000005.xml", class_names=("sofa", "chair"))
    assert set(only_chairs.labels.tolist()) == {1}


def test_voc_few_shot_instances(tmp_path, shared_data):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    chairs = sum(o[0] == "chair" for f in ("000003", "000005") for o in
                 _raw_objects((devkit / "VOC2007" / "Annotations" / f"{f}.xml").read_text()))
    for shot in (2, 10):
        (tmp_path / f"box_{shot}shot_chair_train.txt").write_text(
            "datasets/VOC2007/JPEGImages/000003.jpg\ndatasets/VOC2007/JPEGImages/000005.jpg\n")
    assert chairs > 2  # so that the 2-shot draw really subsamples
    many = load_voc_few_shot(tmp_path, devkit, ("chair",), 10, 0)
    assert len(many) == chairs and all(len(r.labels) == 1 for r in many)
    few = load_voc_few_shot(tmp_path, devkit, ("chair",), 2, 0)
    assert len(few) == 2
    again = load_voc_few_shot(tmp_path, devkit, ("chair",), 2, 0)
    assert [r.boxes.tolist() for r in few] == [r.boxes.tolist() for r in again]
    all_boxes = {tuple(r.boxes[0]) for r in many}
    assert {tuple(r.boxes[0]) for r in few} <= all_boxes
