"""Convert the records of a data source (``src.data.sources``) to MindRecord shards and read them back.

Files for a set (named ``split`` below: a source's name) in ``mindrecord_dir``::

    {split}.mindrecord            (num_shards == 1; FileWriter's own naming)
    {split}.mindrecord0 .. N-1    (num_shards > 1)
    <each of the above>.db        (FileWriter's index files)
    {split}.stamp.json            written last; lists the shards and identifies the source annotations

Every field of one sample (``SCHEMA``): ``image`` the original encoded file bytes (never re-encoded),
``image_id`` int64, ``height``/``width`` int32 (as in the JSON), ``boxes`` float32 [n*4] flattened **xywh**
absolute pixels exactly as in the JSON, ``category_id`` int32 [n], ``iscrowd`` int32 [n], ``file_name``
string, ``num_boxes`` int32 = n. An image without boxes stores one all-zero placeholder row in the three
arrays: MindSpore 2.10's ``MindDataset`` returns an empty variable-length array as a 0-d array holding
uninitialised memory, so empty arrays are never written and readers keep the first ``num_boxes`` rows.
Boxes that ``src.data.coco`` skips (degenerate, entirely outside) are not written.

Shards are written into a private temporary folder and moved into place only when every shard has been
committed; any error removes the temporary folder, so no partial set is ever visible. The stamp is written
after the move: a set without a valid stamp (interrupted move, older source annotations, other shard count)
is rebuilt by ``ensure_source_mindrecord``.

Every set is the set of a data source (``src.data.sources``: COCO-format splits, few-shot splits, VOC-format
image sets), written by ``convert_source`` / ``ensure_source_mindrecord`` under the source's own name (e.g.
``coco_val2017_all``, ``coco_trainvalno5k_base_nonempty``); training, evaluation, ``preprocess.py`` and
``tools/coco_to_mindrecord.py`` all take this road. VOC ``category_id`` values are the catalog's ids
(1 + index in the class list) and ``file_name`` is relative to the VOCdevkit folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from mindspore.mindrecord import FileReader, FileWriter

from src.data.coco import ImageRecord
from src.fileio import atomic_write_text, publish, remove_stale_temporaries, temporary_name
from src.progress import track

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
WRITE_CHUNK = 64  # records per write_raw_data call: bounds memory to a few dozen encoded images

SCHEMA = {
    "image": {"type": "bytes"},
    "image_id": {"type": "int64"},
    "height": {"type": "int32"},
    "width": {"type": "int32"},
    "boxes": {"type": "float32", "shape": [-1]},
    "category_id": {"type": "int32", "shape": [-1]},
    "iscrowd": {"type": "int32", "shape": [-1]},
    "file_name": {"type": "string"},
    "num_boxes": {"type": "int32"},
}


def shard_names(split: str, num_shards: int) -> List[str]:
    """File names (no folder) FileWriter gives to the shards of ``split``."""
    base = f"{split}.mindrecord"
    return [base] if num_shards == 1 else [f"{base}{i}" for i in range(num_shards)]


def stamp_path(mindrecord_dir, split: str) -> Path:
    """Path of the stamp that marks a complete set for ``split``."""
    return Path(mindrecord_dir) / f"{split}.stamp.json"


def write_mindrecord(records: List[ImageRecord], images_folder, output_dir, split: str, num_shards: int = 1,
                     extra_stamp: Optional[dict] = None) -> List[Path]:
    """Write records to MindRecord shards for ``split`` in ``output_dir``, atomically.

    Args:
        records: validated records (``src.data.sources.Source.load``).
        images_folder: folder the records' ``file_name`` are relative to.
        output_dir: destination folder (created if needed). Existing shards of ``split`` are replaced.
        split: set name used in the file names (the source's name).
        num_shards: number of MindRecord shard files (1..1000).
        extra_stamp: additional JSON-serialisable entries for the stamp (``source`` identity, categories).

    Returns:
        Paths of the shard files, in shard order.

    Raises:
        ValueError: ``num_shards`` out of range, or fewer records than shards.
        OSError: an image file cannot be read; no shard files are left behind.
    """
    if not 1 <= num_shards <= 1000:
        raise ValueError(f"num_shards must be in 1..1000, got {num_shards}")
    if len(records) < num_shards:
        raise ValueError(f"{split}: {len(records)} images cannot fill {num_shards} shards; use fewer shards")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    images_folder = Path(images_folder)
    names = shard_names(split, num_shards)
    remove_stale_temporaries(output_dir)
    tmp_dir = output_dir / temporary_name(split)
    tmp_dir.mkdir()
    try:
        writer = FileWriter(str(tmp_dir / f"{split}.mindrecord"), shard_num=num_shards, overwrite=True)
        writer.add_schema(SCHEMA, f"COCO {split} detection")
        writer.add_index(["image_id"])
        starts = range(0, len(records), WRITE_CHUNK)
        for start in track(starts, len(records), f"converting {split} to MindRecord",
                           count=lambda s: len(records[s:s + WRITE_CHUNK])):
            chunk = [_to_sample(r, images_folder) for r in records[start:start + WRITE_CHUNK]]
            writer.write_raw_data(chunk)
        writer.commit()
        remove_mindrecord(output_dir, split)
        for name in names:
            for suffix in ("", ".db"):
                publish(tmp_dir / (name + suffix), output_dir / (name + suffix))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    stamp = {"format_version": FORMAT_VERSION, "split": split, "num_shards": num_shards, "files": names,
             "num_images": len(records)}
    stamp.update(extra_stamp or {})
    _write_json_atomic(stamp_path(output_dir, split), stamp)
    return [output_dir / name for name in names]


def _to_sample(record: ImageRecord, images_folder: Path) -> dict:
    with open(images_folder / record.file_name, "rb") as f:
        data = f.read()
    num_boxes = len(record.boxes)
    boxes, category_ids, iscrowd = record.boxes, record.category_ids, record.iscrowd
    if num_boxes == 0:
        boxes, category_ids, iscrowd = np.zeros((1, 4)), np.zeros(1), np.zeros(1)
    return {
        "image": data,
        "image_id": int(record.image_id),
        "height": int(record.height),
        "width": int(record.width),
        "boxes": np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1),
        "category_id": np.asarray(category_ids, dtype=np.int32),
        "iscrowd": np.asarray(iscrowd, dtype=np.int32),
        "file_name": record.file_name,
        "num_boxes": num_boxes,
    }


def _write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def remove_mindrecord(mindrecord_dir, split: str) -> None:
    """Delete the stamp, shards and .db files of ``split`` (stamp first, so a crash leaves no stamp)."""
    mindrecord_dir = Path(mindrecord_dir)
    stamp_path(mindrecord_dir, split).unlink(missing_ok=True)
    pattern = re.compile(rf"{re.escape(split)}\.mindrecord\d*(\.db)?")
    for path in mindrecord_dir.glob(f"{split}.mindrecord*"):
        if pattern.fullmatch(path.name):
            path.unlink()


def read_stamp(mindrecord_dir, split: str) -> Optional[dict]:
    """The stamp of a complete set, or None when absent, unreadable or of another format version."""
    path = stamp_path(mindrecord_dir, split)
    try:
        with open(path, encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format_version") != FORMAT_VERSION:
        return None
    return stamp


def mindrecord_files(mindrecord_dir, split: str) -> List[Path]:
    """Shard paths of a complete set.

    Raises:
        FileNotFoundError: no valid stamp, or a listed shard or .db file is missing (names it and says
            how to rebuild).
    """
    stamp = read_stamp(mindrecord_dir, split)
    if stamp is None:
        raise FileNotFoundError(f"no complete MindRecord set '{split}' in {mindrecord_dir} "
                                f"(missing {stamp_path(mindrecord_dir, split).name}); "
                                f"run tools/coco_to_mindrecord.py")
    paths = [Path(mindrecord_dir) / name for name in stamp["files"]]
    for path in paths:
        for p in (path, path.with_name(path.name + ".db")):
            if not p.is_file():
                raise FileNotFoundError(f"MindRecord file {p} is missing; run tools/coco_to_mindrecord.py")
    return paths


@contextlib.contextmanager
def _split_lock(mindrecord_dir: Path, split: str):
    """Exclusive lock so that several ranks starting together convert once; the others then reuse the set."""
    mindrecord_dir.mkdir(parents=True, exist_ok=True)
    with open(mindrecord_dir / f".{split}.lock", "w") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; single-process conversion is still atomic
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert_source(source, output_dir, num_shards: int = 1, verify_decode: bool = False) -> List[Path]:
    """Load a data source (``src.data.sources``) and write it as the MindRecord set named ``source.name``.

    The stamp records, besides the usual entries, ``source`` (the source's identity: hashes of every
    annotation / list / split file read, the class ids, shot, seed and filtering), ``categories`` (the
    detector classes, id -> name, in the dataset's id space) and ``summary``.

    Raises:
        src.data.coco.CocoFormatError, src.data.voc.VocFormatError, src.data.few_shot.FewShotSplitError:
            invalid annotations, lists or images (the message names the file).
        ValueError: the source has fewer images than ``num_shards``.
    """
    data = source.load(check_files=True, verify_decode=verify_decode)
    extra = {"source": data.identity, "categories": {str(k): v for k, v in data.categories.items()},
             "summary": data.summary}
    paths = write_mindrecord(data.records, data.images_folder, output_dir, data.name, num_shards, extra)
    logger.info("wrote %d images of %s to %s", len(data.records), data.name, ", ".join(map(str, paths)))
    return paths


def ensure_source_mindrecord(source, mindrecord_dir, num_shards: Optional[int] = None) -> List[Path]:
    """Return the shards of ``source`` (named ``source.name``), converting it first when no set is up to date.

    A set is reused when its stamp has this format version, its ``source`` entry equals
    ``source.identity()`` (so any changed annotation, list or split file, class set, shot, seed or filter
    triggers a rebuild), every shard is present and (if given) the shard count matches. ``num_shards``
    defaults to the existing count, else 1. Several ranks starting together convert once (a file lock).

    Raises:
        as :func:`convert_source` when a conversion is needed.
    """
    mindrecord_dir = Path(mindrecord_dir)
    with _split_lock(mindrecord_dir, source.name):
        stamp = read_stamp(mindrecord_dir, source.name)
        if stamp is not None:
            # Compare in JSON form: the stamp went through JSON, which turns tuples into lists.
            identity = json.loads(json.dumps(source.identity()))
            if stamp.get("source") == identity and num_shards in (None, stamp.get("num_shards")):
                with contextlib.suppress(FileNotFoundError):
                    return mindrecord_files(mindrecord_dir, source.name)
            logger.warning("MindRecord set %s in %s is stale or incomplete; rebuilding", source.name,
                           mindrecord_dir)
        return convert_source(source, mindrecord_dir, num_shards or 1)


def read_mindrecord(files) -> Iterator[Dict]:
    """Yield every sample of the given shard files as a dict of numpy values (schema ``SCHEMA``).

    ``boxes`` is float32 [n, 4] (xywh pixels), ``category_id`` and ``iscrowd`` int32 [n] (placeholder rows
    removed); ``image`` is the original encoded bytes.
    """
    reader = FileReader([str(f) for f in files])
    try:
        for sample in reader.get_next():
            sample = dict(sample)
            n = int(sample["num_boxes"])
            sample["boxes"] = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)[:n]
            sample["category_id"] = np.asarray(sample["category_id"], dtype=np.int32).reshape(-1)[:n]
            sample["iscrowd"] = np.asarray(sample["iscrowd"], dtype=np.int32).reshape(-1)[:n]
            yield sample
    finally:
        reader.close()
