"""infer.py's inputs and outputs: directories and globs, distinct names for same-stem inputs, inputs never overwritten.

Real coco_tiny images, reached through symlinks in tmp_path so the layouts (two folders holding ``img.jpg``, an
input inside the output folder) can be built without copying the data. One ``infer.main`` run (detector stubbed) checks
the planned names are the ones written.
"""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import infer
from src.errors import InputError
from src.infer_paths import expand_inputs, output_names

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "detr" / "detr_tiny.yaml"


@pytest.fixture()
def images(shared_data):
    return sorted((shared_data / "coco_tiny" / "val2017").glob("*.jpg"))[:3]


def _link(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def test_directory_and_glob_expand_to_their_images(tmp_path, images):
    folder = tmp_path / "photos"
    for image in images:
        _link(folder / image.name, image)
    (folder / "notes.txt").write_text("not an image")
    _link(tmp_path / "deep" / "x" / "one.jpg", images[0])

    assert expand_inputs([str(folder)]) == sorted(folder / i.name for i in images)
    assert expand_inputs([str(tmp_path / "**" / "*.jpg")])[-1] == tmp_path / "photos" / images[-1].name
    assert tmp_path / "deep" / "x" / "one.jpg" in expand_inputs([str(tmp_path / "**" / "*.jpg")])
    # a file named twice (directly and through the directory) is one input
    assert len(expand_inputs([str(folder / images[0].name), str(folder)])) == len(images)


def test_nothing_matched_names_the_pattern_or_path(tmp_path):
    with pytest.raises(InputError, match=r"pattern '.*nothing-\*\.jpg' matched no file"):
        expand_inputs([str(tmp_path / "nothing-*.jpg")])
    with pytest.raises(InputError, match=r"image not found: '.*missing\.jpg'"):
        expand_inputs([str(tmp_path / "missing.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"directory '.*empty' holds no image file"):
        expand_inputs([str(tmp_path / "empty")])


def test_same_stem_inputs_get_distinct_folder_qualified_names(tmp_path, images):
    a = _link(tmp_path / "a" / "img.jpg", images[0])
    b = _link(tmp_path / "b" / "img.jpg", images[1])
    c = _link(tmp_path / "c" / "other.jpg", images[2])
    assert output_names([a, b, c], tmp_path / "out") == ["a_img", "b_img", "other"]
    # same parent name too: one more folder level
    d = _link(tmp_path / "x" / "a" / "img.jpg", images[2])
    assert output_names([a, d], tmp_path / "out") == [f"{tmp_path.name}_a_img", "x_a_img"]


def test_an_input_inside_the_output_folder_is_not_a_target(tmp_path, images):
    out = tmp_path / "out"
    inside = _link(out / "cat.jpg", images[0])
    assert output_names([inside], out) == ["cat_det"]
    # another input already named like the protected one's new name stays distinct
    clash = _link(tmp_path / "in" / "cat_det.png", images[1])
    assert output_names([inside, clash], out) == ["cat_det", "cat_det_det"]


def test_infer_writes_the_planned_names_and_keeps_inputs(tmp_path, images, monkeypatch):
    # The detector is replaced by a stub (one fixed detection): this test is about files; the real model's
    # inference runs in test_train_e2e.
    detection = {"bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9, "category_id": 1, "category_name": "person"}
    monkeypatch.setattr(infer, "checkpoint_catalog", lambda path: None)  # the config's (COCO) classes
    monkeypatch.setattr(infer, "build_inference_net",
                        lambda cfg, path, catalog: SimpleNamespace(network=None, postprocess=None))
    monkeypatch.setattr(infer, "predict", lambda net, image, data_cfg, threshold, catalog, unpadded: [detection])
    out = tmp_path / "out"
    inside = _link(out / "cat.jpg", images[0])  # its drawing would be out/cat.jpg
    other = _link(tmp_path / "a" / "cat_det.jpg", images[1])  # the protected input's new name
    before = hashlib.sha256(inside.read_bytes()).hexdigest()

    infer.main(["--config", str(TINY), "--checkpoint", "unused.ckpt", "--images", str(inside), str(other),
                "--output_dir", str(out), "--pynative"])

    assert inside.is_symlink() and hashlib.sha256(inside.read_bytes()).hexdigest() == before
    written = sorted(p.name for p in out.iterdir() if p != inside)
    assert written == ["cat_det.jpg", "cat_det.json", "cat_det_det.jpg", "cat_det_det.json"]
    assert json.loads((out / "cat_det_det.json").read_text()) == [detection]
