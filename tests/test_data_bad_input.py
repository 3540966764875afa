"""Bad and unusual input: each case gives a clear error naming the culprit or a documented, counted skip,
and a failed conversion leaves no MindRecord files behind. Small images are built in tmp_path from a real
coco_tiny photograph."""

import json

import numpy as np
import pytest
from PIL import Image

from src.config import family_defaults
from src.data import mindrecord as mr
from src.data.catalog import CatalogError
from src.data.coco import CocoFormatError, load_coco_split
from src.data.dataset import create_dataset
from src.data.sources import coco_split_source
from src.data.transforms import decode_image

SOURCE = "val2017/000000532481.jpg"
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}]
DATA_CFG = {**family_defaults("detr")["data"],
            "max_boxes": 4, "eval_size": 64, "eval_max_size": 128, "eval_pad_buckets": [[128, 128]],
            "train_scales": [64], "train_max_size": 128, "crop_scales": [64], "crop_min_size": 32,
            "crop_max_size": 48, "train_pad_buckets": [[128, 128]], "num_workers": 1,
            # the split "mini" with every image, as coco_split_source reads it (set coco_mini_all)
            "train_split": "mini", "val_split": "mini", "filter_empty": False}


@pytest.fixture(scope="module")
def photo(shared_data):
    """A real COCO photograph, shrunk to 96x64 (w x h) RGB to keep the tests fast."""
    with Image.open(shared_data / "coco_tiny" / SOURCE) as im:
        return im.convert("RGB").resize((96, 64), Image.BILINEAR)


def make_coco(root, images, annotations, categories=CATEGORIES, split="mini"):
    """Write a COCO directory: ``images`` maps file name -> (PIL image or bytes, save kwargs, json size)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    entries = []
    for i, (name, (content, kwargs, size)) in enumerate(images.items(), start=1):
        if isinstance(content, bytes):
            (root / split / name).write_bytes(content)
        elif content is not None:
            content.save(root / split / name, **kwargs)
        entries.append({"id": i, "file_name": name, "height": size[0], "width": size[1]})
    anns = [dict(a, id=100 + k, iscrowd=a.get("iscrowd", 0)) for k, a in enumerate(annotations)]
    data = {"images": entries, "annotations": anns, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _box(image_id, bbox, category_id=1):
    return {"image_id": image_id, "bbox": bbox, "category_id": category_id}


def _assert_no_mindrecord(folder):
    leftovers = [p.name for p in folder.iterdir() if ".mindrecord" in p.name or p.name.startswith(".tmp")
                 or p.name.endswith(".stamp.json")] if folder.exists() else []
    assert leftovers == []


def test_missing_image_names_file_and_leaves_nothing(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96)), "gone.jpg": (None, {}, (64, 96))},
                     [_box(1, [1, 1, 10, 10])])
    out = tmp_path / "mr"
    with pytest.raises(CocoFormatError, match=r"image file missing: .*gone\.jpg"):
        mr.ensure_source_mindrecord(coco_split_source(coco, "mini"), out)
    _assert_no_mindrecord(out)


def test_corrupt_jpeg_names_file(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96)),
                                         "bad.jpg": (b"\xff\xd8\xff\xe0 this is not a jpeg", {}, (64, 96))}, [])
    with pytest.raises(CocoFormatError, match=r"cannot read image .*bad\.jpg"):
        mr.convert_source(coco_split_source(coco, "mini"), tmp_path / "mr")
    _assert_no_mindrecord(tmp_path / "mr")
    with pytest.raises(ValueError, match=r"image id 7 \(file 'bad\.jpg'\)"):
        decode_image(b"\xff\xd8\xff\xe0 this is not a jpeg", 7, "bad.jpg")


def test_truncated_jpeg_caught_by_full_decode(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))}, [])
    path = coco / "mini" / "a.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    load_coco_split(coco, "mini")  # the default header check cannot see truncation (documented)
    with pytest.raises(CocoFormatError, match=r"cannot read image .*a\.jpg"):
        load_coco_split(coco, "mini", verify_decode=True)


def test_undecodable_image_in_pipeline_names_image(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (b"not an image at all", {}, (64, 96))}, [])
    records, _, _ = load_coco_split(coco, "mini", check_files=False)
    source = coco_split_source(coco, "mini")
    mr.write_mindrecord(records, coco / "mini", tmp_path / "mr", source.name, extra_stamp={"source": source.identity()})
    dataset = create_dataset(coco, DATA_CFG, "val", tmp_path / "mr", 1)
    with pytest.raises(RuntimeError, match=r"image id 1 \(file 'a\.jpg'\)"):
        next(dataset.create_dict_iterator(output_numpy=True))


def test_malformed_json_names_path_and_position(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))}, [])
    ann = coco / "annotations" / "instances_mini.json"
    ann.write_text(ann.read_text()[:-5])
    # The catalog reads the categories first, so the error is a CatalogError (same message).
    with pytest.raises(CatalogError, match=r"malformed JSON in .*instances_mini\.json: .*line 1 column"):
        mr.ensure_source_mindrecord(coco_split_source(coco, "mini"), tmp_path / "mr")
    _assert_no_mindrecord(tmp_path / "mr")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, photo, key):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))}, [])
    ann = coco / "annotations" / "instances_mini.json"
    data = json.loads(ann.read_text())
    del data[key]
    ann.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match=f"missing top-level key '{key}'"):
        load_coco_split(coco, "mini")


def test_unknown_category_names_annotation_and_id(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))},
                     [_box(1, [1, 1, 10, 10]), _box(1, [2, 2, 10, 10], category_id=12)])
    with pytest.raises(CocoFormatError, match=r"annotation id 101 \(image id 1\) has unknown category id 12"):
        mr.convert_source(coco_split_source(coco, "mini"), tmp_path / "mr")
    _assert_no_mindrecord(tmp_path / "mr")


def test_annotation_for_unlisted_image(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))}, [_box(5, [1, 1, 10, 10])])
    with pytest.raises(CocoFormatError, match=r"annotation id 100 refers to image id 5"):
        load_coco_split(coco, "mini")


def test_degenerate_and_outside_boxes_skipped_with_counts(tmp_path, photo):
    anns = [
        _box(1, [10, 10, 20, 20]),  # kept
        _box(1, [10, 10, 0, 20]),  # w == 0: skipped
        _box(1, [10, 10, 20, -3]),  # h < 0: skipped
        _box(1, [96, 10, 5, 5]),  # starts at the right border: entirely outside, skipped
        _box(1, [-30, 10, 20, 20]),  # ends left of the image: skipped
        _box(1, [90, 60, 20, 20], category_id=17),  # partly outside: kept as written, clamped later
    ]
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))}, anns)
    records, _, summary = load_coco_split(coco, "mini")
    assert (summary.skipped_degenerate, summary.skipped_outside, summary.partly_outside) == (2, 2, 1)
    np.testing.assert_array_equal(records[0].boxes, [[10, 10, 20, 20], [90, 60, 20, 20]])
    np.testing.assert_array_equal(records[0].category_ids, [1, 17])

    mr.convert_source(coco_split_source(coco, "mini"), tmp_path / "mr")
    batch = next(create_dataset(coco, DATA_CFG, "val", tmp_path / "mr", 1)
                 .create_dict_iterator(output_numpy=True))
    assert batch["tgt_valid"][0].tolist() == [True, True, False, False]
    # The partly-outside box is clamped to the 96x64 image: x 90..96, y 60..64 -> cx 93/96, cy 62/64.
    np.testing.assert_allclose(batch["tgt_boxes"][0, 1], [93 / 96, 62 / 64, 6 / 96, 4 / 64], rtol=1e-6)


def test_malformed_bbox_is_an_error(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96))}, [_box(1, [1, 2, 3])])
    with pytest.raises(CocoFormatError, match=r"annotation id 100 \(image id 1\) bbox must be 4 numbers"):
        load_coco_split(coco, "mini")


def test_image_without_annotations_is_kept(tmp_path, photo):
    coco = make_coco(tmp_path / "coco", {"a.jpg": (photo, {}, (64, 96)), "b.jpg": (photo, {}, (64, 96))},
                     [_box(1, [1, 1, 10, 10])])
    records, _, summary = load_coco_split(coco, "mini")
    assert [r.image_id for r in records] == [1, 2] and summary.images_without_boxes == 1
    assert records[1].boxes.shape == (0, 4)
    files = mr.convert_source(coco_split_source(coco, "mini"), tmp_path / "mr")
    empty = [s for s in mr.read_mindrecord(files) if s["image_id"] == 2][0]
    assert empty["boxes"].shape == (0, 4) and empty["category_id"].shape == (0,) and empty["iscrowd"].shape == (0,)
    for training in (False, True):
        batch = next(create_dataset(coco, DATA_CFG, "train" if training else "val", tmp_path / "mr", 2, shuffle=False)
                     .create_dict_iterator(output_numpy=True))
        assert batch["image_id"].tolist() == [1, 2]
        assert batch["tgt_valid"].sum(axis=1).tolist() == [1, 0]


def test_write_error_leaves_no_partial_files_and_keeps_previous_set(tmp_path, photo, monkeypatch):
    coco = make_coco(tmp_path / "coco", {f"{i}.jpg": (photo, {}, (64, 96)) for i in range(5)}, [])
    out = tmp_path / "mr"
    previous = mr.convert_source(coco_split_source(coco, "mini"), out, num_shards=2)
    before = sorted(p.name for p in out.iterdir())
    calls = []
    real = mr._to_sample

    def failing(record, folder):
        calls.append(record.image_id)
        if len(calls) == 4:
            raise OSError("disk full (simulated)")
        return real(record, folder)

    monkeypatch.setattr(mr, "WRITE_CHUNK", 2)  # so that some chunks are written before the failure
    monkeypatch.setattr(mr, "_to_sample", failing)
    with pytest.raises(OSError, match="simulated"):
        mr.convert_source(coco_split_source(coco, "mini"), out, num_shards=3)
    assert sorted(p.name for p in out.iterdir()) == before
    assert len(list(mr.read_mindrecord(previous))) == 5

    fresh = tmp_path / "mr_fresh"
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        mr.convert_source(coco_split_source(coco, "mini"), fresh, num_shards=3)
    _assert_no_mindrecord(fresh)


def _save_cmyk(photo, path):
    photo.convert("CMYK").save(path, quality=95)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_unusual_color_modes_decode_to_rgb(tmp_path, photo, mode):
    name = "x.png" if mode == "RGBA" else "x.jpg"
    image = photo.convert(mode)
    if mode == "RGBA":
        alpha = np.zeros((64, 96), np.uint8)
        alpha[:, 48:] = 255
        image.putalpha(Image.fromarray(alpha))
    coco = make_coco(tmp_path / "coco", {name: (image, {"quality": 95} if name.endswith("jpg") else {},
                                                (64, 96))}, [_box(1, [1, 1, 10, 10])])
    decoded = decode_image((coco / "mini" / name).read_bytes())
    assert decoded.shape == (64, 96, 3) and decoded.dtype == np.uint8
    reference = np.asarray(photo.convert(mode).convert("RGB"), np.float32)
    # JPEG loses a little; a colour-channel mix-up (BGR/RGB, inverted CMYK) would be off by far more.
    assert np.abs(decoded.astype(np.float32) - reference).mean() < 6
    if mode == "L":
        assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()

    mr.convert_source(coco_split_source(coco, "mini"), tmp_path / "mr")
    batch = next(create_dataset(coco, DATA_CFG, "val", tmp_path / "mr", 1)
                 .create_dict_iterator(output_numpy=True))
    assert batch["image"].shape == (1, 3, 128, 128)
    assert batch["img_size"].tolist() == [[64, 96]]


def _save_with_orientation(photo, path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.save(path, quality=95, exif=exif)


def test_exif_rotation_applied_and_size_checked(tmp_path, photo):
    # Orientation 6: the stored 96x64 (w x h) pixels are shown rotated 90 degrees clockwise, i.e. 64x96.
    coco = make_coco(tmp_path / "coco", {"r.jpg": (None, {}, (96, 64))}, [_box(1, [1, 1, 10, 10])])
    _save_with_orientation(photo, coco / "mini" / "r.jpg", 6)
    raw = np.asarray(Image.open(coco / "mini" / "r.jpg").convert("RGB"))  # PIL ignores EXIF orientation
    decoded = decode_image((coco / "mini" / "r.jpg").read_bytes())
    np.testing.assert_array_equal(decoded, np.rot90(raw, k=-1))
    records, _, _ = load_coco_split(coco, "mini")
    assert (records[0].height, records[0].width) == (96, 64)

    wrong = make_coco(tmp_path / "wrong", {"r.jpg": (None, {}, (64, 96))}, [])
    _save_with_orientation(photo, wrong / "mini" / "r.jpg", 6)
    with pytest.raises(CocoFormatError, match=r"r\.jpg: size after EXIF orientation is 96x64 .* says 64x96"):
        mr.ensure_source_mindrecord(coco_split_source(wrong, "mini"), tmp_path / "mr")
    _assert_no_mindrecord(tmp_path / "mr")
