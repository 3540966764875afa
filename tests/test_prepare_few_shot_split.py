"""tools/prepare_few_shot_split.py and src/data/few_shot_sampling.py on the real coco_tiny and voc_mini data."""

import collections
import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from src.data.few_shot import load_coco_few_shot, load_voc_few_shot, read_voc_split_list
from src.data.few_shot_sampling import coco_few_shot_splits
from src.data.voc import VOC_CLASSES
from tests.test_defrcn_data import voc_object_names

REPO = Path(__file__).resolve().parents[1]
COCO_SHOTS = (1, 2, 3, 5, 10, 30)
VOC_SHOTS = (1, 2, 3, 5, 10)


def _tool():
    spec = importlib.util.spec_from_file_location("prepare_few_shot_split_tool",
                                                  REPO / "tools" / "prepare_few_shot_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _coco_json(shared_data):
    return shared_data / "coco_tiny" / "annotations" / "instances_train2017.json"


def _per_image_counts(data):
    """category id -> image id -> number of non-crowd annotations (straight from the JSON)."""
    counts = collections.defaultdict(collections.Counter)
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            counts[ann["category_id"]][ann["image_id"]] += 1
    return counts


def _reachable(counts, k):
    """Largest sum <= k of a sub-multiset of counts, by brute force over a set of reachable sums."""
    sums = {0}
    for c in counts:
        sums |= {s + c for s in sums if s + c <= k}
    return max(sums)


# ----------------------------------------------------------------------------------------------------- COCO
def test_coco_splits_written_by_the_tool(tmp_path, shared_data):
    out = tmp_path / "cocosplit"
    assert _tool().main(["coco", "--annotations", str(_coco_json(shared_data)), "--output_dir", str(out),
                         "--seeds", "0", "2"]) == 0
    data = json.loads(_coco_json(shared_data).read_text())
    counts = _per_image_counts(data)
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(p.name for p in out.iterdir()) == ["seed0", "seed1"]  # seed 0 in seed0/ (DeFRCN layout)
    for seed in (0, 1):
        for cat_id, name in names.items():
            previous, previous_images = set(), set()
            for shot in COCO_SHOTS:
                split = json.loads((out / f"seed{seed}" / f"full_box_{shot}shot_{name}_trainval.json").read_text())
                anns = split["annotations"]
                assert all(a["category_id"] == cat_id and not a.get("iscrowd", 0) for a in anns)
                image_ids = [img["id"] for img in split["images"]]
                assert len(set(image_ids)) == len(image_ids) and {a["image_id"] for a in anns} == set(image_ids)
                # Whole images: every non-crowd annotation of the class in a chosen image is chosen.
                assert len(anns) == sum(counts[cat_id][i] for i in image_ids)
                # TFA's draws are nested: the K-shot set holds every smaller-shot set.
                ids = {a["id"] for a in anns}
                assert previous <= ids
                # Exactly K when whole unused images can complete the smaller-shot set to K, else the largest
                # reachable count (never more than K).
                assert len(anns) <= shot
                if len(anns) < shot:
                    unused = [n for i, n in counts[cat_id].items() if i not in previous_images]
                    assert len(anns) == len(previous) + _reachable(unused, shot - len(previous)), (name, shot)
                previous, previous_images = ids, set(image_ids)
                assert split["categories"] == data["categories"]


def _tfa_transcription(data, seed, shots):
    """TFA prepare_coco_few_shot.generate_seeds for one seed, transcribed (terminates only when K is reachable)."""
    random.seed(seed)
    anno = {c["id"]: [] for c in data["categories"]}
    for a in data["annotations"]:
        if a["iscrowd"] == 1:
            continue
        anno[a["category_id"]].append(a)
    out = {}
    for c in sorted(anno):
        img_ids = {}
        for a in anno[c]:
            img_ids.setdefault(a["image_id"], []).append(a)
        sample_shots, sample_imgs = [], []
        for shots_ in shots:
            while True:
                imgs = random.sample(list(img_ids.keys()), shots_)
                for img in imgs:
                    if any(img == s["image_id"] for s in sample_shots):
                        continue
                    if len(img_ids[img]) + len(sample_shots) > shots_:
                        continue
                    sample_shots.extend(img_ids[img])
                    sample_imgs.append(img)
                    if len(sample_shots) == shots_:
                        break
                if len(sample_shots) == shots_:
                    break
            out[(c, shots_)] = ([i for i in sample_imgs], [a["id"] for a in sample_shots])
    return out


def test_coco_draws_equal_tfa_where_tfa_terminates(shared_data):
    data = json.loads(_coco_json(shared_data).read_text())
    counts = _per_image_counts(data)
    # Classes with >= 5 single-instance images: any partial draw can still be completed to exactly 5, so
    # TFA's loop terminates and both must make the same random calls and choices.
    keep = {c for c, per_image in counts.items() if sum(v == 1 for v in per_image.values()) >= 5}
    assert len(keep) >= 5
    subset = {"images": data["images"], "categories": [c for c in data["categories"] if c["id"] in keep],
              "annotations": [a for a in data["annotations"] if a["category_id"] in keep]}
    names = {c["id"]: c["name"] for c in subset["categories"]}
    shots = (1, 2, 3, 5)
    for seed in (0, 3):
        ours = coco_few_shot_splits(subset, seed, shots)
        for (cat_id, shot), (img_ids, ann_ids) in _tfa_transcription(subset, seed, shots).items():
            split = ours[names[cat_id]][shot]
            assert [img["id"] for img in split["images"]] == img_ids
            assert [a["id"] for a in split["annotations"]] == ann_ids


def test_coco_splits_reproducible_and_seed0_at_root(tmp_path, shared_data):
    tool = _tool()
    args = ["coco", "--annotations", str(_coco_json(shared_data)), "--seeds", "0", "2", "--shots", "1", "5"]
    assert tool.main(args + ["--output_dir", str(tmp_path / "a"), "--seed0_at_root"]) == 0
    assert tool.main(args + ["--output_dir", str(tmp_path / "b"), "--seed0_at_root"]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.json"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.json"))
    assert len(files_a) == 2 * 2 * 80
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    assert (tmp_path / "a" / "full_box_5shot_person_trainval.json").is_file()  # TFA layout for seed 0
    seed0 = (tmp_path / "a" / "full_box_5shot_person_trainval.json").read_text()
    assert seed0 != (tmp_path / "a" / "seed1" / "full_box_5shot_person_trainval.json").read_text()
    # The loader reads them back (seed 0 at the root): person gets exactly 5 boxes (17 single-person images).
    records = load_coco_few_shot(tmp_path / "a", ("person", "dog"), 5, 0)
    labels = [int(label) for r in records for label in r.labels]
    assert labels.count(0) == 5 and labels.count(1) <= 5


def test_coco_bad_input_names_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "trainvalno5k.json"
    assert _tool().main(["coco", "--annotations", str(missing), "--output_dir", str(tmp_path / "out")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "annotations": []}')
    assert _tool().main(["coco", "--annotations", str(broken), "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(broken) in err and "categories" in err
    assert _tool().main(["coco", "--annotations", str(broken), "--output_dir", str(tmp_path / "out"),
                         "--shots", "5", "1"]) == 1
    assert "ascending" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------- VOC
def test_voc_lists_written_by_the_tool(tmp_path, shared_data):
    devkit = shared_data / "voc_mini" / "VOCdevkit"
    out = tmp_path / "vocsplit"
    assert _tool().main(["voc", "--devkit", str(devkit), "--output_dir", str(out), "--seeds", "0", "3",
                         "--seed0_at_root"]) == 0
    present = collections.Counter()
    for year in (2007, 2012):
        for file_id in (devkit / f"VOC{year}" / "ImageSets" / "Main" / "trainval.txt").read_text().split():
            present.update(set(voc_object_names(devkit, file_id)))
    for seed in (0, 1, 2):
        folder = out if seed == 0 else out / f"seed{seed}"
        for cls in VOC_CLASSES:
            previous = []
            for shot in VOC_SHOTS:
                lines = [ln for ln in (folder / f"box_{shot}shot_{cls}_train.txt").read_text().splitlines() if ln]
                assert lines[:len(previous)] == previous  # nested draws
                previous = lines
                assert len(set(lines)) == len(lines)
                if not present[cls]:
                    assert not lines
                    continue
                assert lines, (cls, shot)
                for line in lines:
                    assert re.fullmatch(r"datasets/VOC(2007|2012)/JPEGImages/(\d{6}|\d{4}_\d{6})\.jpg", line)
                    assert cls in voc_object_names(devkit, Path(line).stem)
    # Loaded back with TFA's instance semantics: one box per record, min(K, instances in the listed images)
    # per class (a draw of an already listed image adds nothing, so a list may hold fewer than K instances).
    classes = ("car", "chair", "sheep")
    for shot in VOC_SHOTS:
        records = load_voc_few_shot(out, devkit, classes, shot, 0)
        assert all(len(r.labels) == 1 for r in records)
        per_class = collections.Counter(classes[int(r.labels[0])] for r in records)
        for cls in classes:
            listed = (out / f"box_{shot}shot_{cls}_train.txt").read_text().split()
            available = sum(voc_object_names(devkit, Path(line).stem).count(cls) for line in listed)
            assert per_class[cls] == min(shot, available)
        assert per_class["car"] >= 1 and per_class["sheep"] == 0
    assert read_voc_split_list(out / "box_1shot_sheep_train.txt") == []


def test_voc_bad_input_names_the_file(tmp_path, capsys):
    devkit = tmp_path / "VOCdevkit"
    (devkit / "VOC2007" / "ImageSets" / "Main").mkdir(parents=True)
    (devkit / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    args = ["voc", "--devkit", str(devkit), "--output_dir", str(tmp_path / "out"), "--image_sets", "2007_trainval"]
    assert _tool().main(args) == 1
    assert str(devkit / "VOC2007" / "Annotations" / "000001.xml") in capsys.readouterr().err
    assert _tool().main(args[:-1] + ["2012_trainval"]) == 1
    assert str(devkit / "VOC2012" / "ImageSets" / "Main" / "trainval.txt") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        _tool().main(["voc", "--devkit", str(devkit)])  # --output_dir is required
