"""COCO -> MindRecord -> records round trip on real coco_tiny data, compared with the JSON itself."""

import json

import numpy as np
import pytest

from src.data.mindrecord import (
    convert_source,
    ensure_source_mindrecord,
    mindrecord_files,
    read_mindrecord,
    stamp_path,
)
from src.data.sources import coco_split_source

SET = "coco_val2017_all"  # the set name of coco_split_source(..., "val2017")


def _ensure(coco_dir, mindrecord_dir, **kwargs):
    return ensure_source_mindrecord(coco_split_source(coco_dir, "val2017"), mindrecord_dir, **kwargs)


def _expected_from_json(coco_dir, split):
    """Per image id: file name, size, and annotations exactly as written in the JSON (no library parsing)."""
    with open(coco_dir / "annotations" / f"instances_{split}.json") as f:
        data = json.load(f)
    expected = {img["id"]: {"file_name": img["file_name"], "height": img["height"], "width": img["width"],
                            "anns": []} for img in data["images"]}
    for ann in data["annotations"]:
        expected[ann["image_id"]]["anns"].append((ann["bbox"], ann["category_id"], ann["iscrowd"]))
    return expected


@pytest.mark.parametrize("split,num_shards", [("train2017", 1), ("val2017", 3)])
def test_round_trip_equals_json(shared_data, tmp_path, split, num_shards):
    coco_dir = shared_data / "coco_tiny"
    files = convert_source(coco_split_source(coco_dir, split), tmp_path, num_shards=num_shards)
    assert len(files) == num_shards
    expected = _expected_from_json(coco_dir, split)
    samples = list(read_mindrecord(files))
    assert sorted(s["image_id"] for s in samples) == sorted(expected)
    for s in samples:
        exp = expected[s["image_id"]]
        assert s["file_name"] == exp["file_name"]
        assert (s["height"], s["width"]) == (exp["height"], exp["width"])
        assert s["image"] == (coco_dir / split / exp["file_name"]).read_bytes()
        boxes = np.array([a[0] for a in exp["anns"]], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(s["boxes"], boxes)
        assert s["boxes"].dtype == np.float32
        np.testing.assert_array_equal(s["category_id"], [a[1] for a in exp["anns"]])
        np.testing.assert_array_equal(s["iscrowd"], [a[2] for a in exp["anns"]])
    total_crowd = sum(a[2] for e in expected.values() for a in e["anns"])
    assert total_crowd > 0, "coco_tiny has crowd annotations; the crowd flag must survive the round trip"
    assert sum(int(s["iscrowd"].sum()) for s in samples) == total_crowd


def test_ensure_reuses_fresh_set_and_rebuilds_stale(shared_data, tmp_path):
    coco_dir = shared_data / "coco_tiny"
    files = _ensure(coco_dir, tmp_path)
    mtime = files[0].stat().st_mtime_ns
    assert _ensure(coco_dir, tmp_path) == files
    assert files[0].stat().st_mtime_ns == mtime, "a fresh set must be reused, not rewritten"

    ann = str((coco_dir / "annotations" / "instances_val2017.json").resolve())
    stamp = json.loads(stamp_path(tmp_path, SET).read_text())
    stamp["source"]["files"][ann] = "0" * 64
    stamp_path(tmp_path, SET).write_text(json.dumps(stamp))
    _ensure(coco_dir, tmp_path)
    assert json.loads(stamp_path(tmp_path, SET).read_text())["source"]["files"][ann] != "0" * 64

    files[0].with_name(files[0].name + ".db").unlink()
    with pytest.raises(FileNotFoundError, match="mindrecord.db"):
        mindrecord_files(tmp_path, SET)
    rebuilt = _ensure(coco_dir, tmp_path)
    assert len(list(read_mindrecord(rebuilt))) == 80

    stamp_path(tmp_path, SET).unlink()
    with pytest.raises(FileNotFoundError, match="coco_to_mindrecord"):
        mindrecord_files(tmp_path, SET)


def test_ensure_changes_shard_count(shared_data, tmp_path):
    coco_dir = shared_data / "coco_tiny"
    _ensure(coco_dir, tmp_path, num_shards=2)
    files = _ensure(coco_dir, tmp_path, num_shards=1)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == [f"{SET}.mindrecord", f"{SET}.mindrecord.db", f"{SET}.stamp.json"]
    assert len(list(read_mindrecord(files))) == 80


def test_cli_converts_and_reports_errors(shared_data, tmp_path, capsys):
    from tools.coco_to_mindrecord import main

    coco_dir = shared_data / "coco_tiny"
    assert main(["--coco_path", str(coco_dir), "--split", "val2017", "--output_dir", str(tmp_path),
                 "--num_shards", "2"]) == 0
    assert len(list(read_mindrecord(mindrecord_files(tmp_path, SET)))) == 80
    assert main(["--coco_path", str(coco_dir), "--split", "val2099", "--output_dir", str(tmp_path)]) == 1
    assert "instances_val2099.json" in capsys.readouterr().err
