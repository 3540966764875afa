"""Pascal VOC annotation reader (VOC2007 / VOC2012 ``VOCdevkit`` layout).

Layout::

    VOCdevkit/VOC{year}/Annotations/{file_id}.xml
    VOCdevkit/VOC{year}/ImageSets/Main/{split}.txt   (one file id per line)
    VOCdevkit/VOC{year}/JPEGImages/{file_id}.jpg

Follows detectron2 ``data/datasets/pascal_voc.py`` and TFA/DeFRCN ``meta_voc.py``: boxes are read from
``bndbox`` and converted from VOC's 1-based inclusive pixel indices to 0-based continuous xyxy by subtracting 1
from ``xmin`` and ``ymin`` only; ``difficult`` objects are kept (detectron2 and DeFRCN train on them) and
flagged so that evaluation can ignore them; objects whose class is not in the requested class list are
dropped (this is how base-class training hides the novel classes). ``<part>`` sub-objects (head, hand, foot
of person layouts) are not objects and are ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from src.errors import InputError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The 20 VOC classes in the official (alphabetical) order."""


class VocFormatError(InputError, ValueError):
    """Raised when a VOC annotation file or list cannot be used; the message names the file."""


@dataclass
class VocRecord:
    """One VOC image and its objects.

    Attributes:
        file_id: e.g. ``"000005"`` (VOC2007) or ``"2008_000123"`` (VOC2012).
        file_name: absolute path of the JPEG.
        height, width: image size from the XML ``<size>``.
        boxes: float32 [n, 4] xyxy, 0-based pixels (``xmin - 1, ymin - 1, xmax, ymax``).
        labels: int32 [n], indices into the class list the record was read with.
        difficult: bool [n], VOC ``difficult`` flags.
    """

    file_id: str
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def year_of_file_id(file_id: str) -> int:
    """The VOC year an id belongs to, by the TFA rule: VOC2012 ids contain an underscore (``2008_000123``)."""
    return 2012 if "_" in file_id else 2007


def voc_annotation_path(devkit_root: Path, file_id: str) -> Path:
    """``VOCdevkit/VOC{year}/Annotations/{file_id}.xml``, the year by :func:`year_of_file_id`."""
    return Path(devkit_root) / f"VOC{year_of_file_id(file_id)}" / "Annotations" / f"{file_id}.xml"


def voc_image_id(file_id: str) -> int:
    """Integer image id of a VOC file id, unique over VOC2007 and VOC2012 and reversible (:func:`voc_file_id`).

    VOC2007 ids (``"000005"``) map to their number (< 10**6); VOC2012 ids (``"2008_000123"``) map to
    ``year * 10**6 + number`` (2008000123), so VOC2012's ``2007_000027`` and VOC2007's ``000027`` stay apart.

    Raises:
        VocFormatError: an id of neither form.
    """
    parts = file_id.split("_")
    if len(parts) == 1 and len(file_id) == 6 and file_id.isdigit():
        return int(file_id)
    if len(parts) == 2 and len(parts[0]) == 4 and len(parts[1]) == 6 and file_id.replace("_", "").isdigit():
        return int(parts[0]) * 1_000_000 + int(parts[1])
    raise VocFormatError(f"VOC file id {file_id!r} is neither NNNNNN (VOC2007) nor YYYY_NNNNNN (VOC2012)")


def voc_file_id(image_id: int) -> str:
    """The VOC file id of an integer id made by :func:`voc_image_id`."""
    image_id = int(image_id)
    if image_id < 1_000_000:
        return f"{image_id:06d}"
    return f"{image_id // 1_000_000}_{image_id % 1_000_000:06d}"


def parse_split_spec(spec: str) -> List[Tuple[int, str]]:
    """``"2007_trainval+2012_trainval"`` -> ``[(2007, "trainval"), (2012, "trainval")]``, in the given order.

    Raises:
        VocFormatError: a part that is not ``{2007|2012}_{image set}``.
    """
    parts = []
    for part in str(spec).split("+"):
        year, _, image_set = part.strip().partition("_")
        if year not in ("2007", "2012") or not image_set:
            raise VocFormatError(f"VOC split {spec!r}: part {part!r} must look like 2007_trainval or 2012_train "
                                 f"(year 2007 or 2012, then the ImageSets/Main list name), joined by '+'")
        parts.append((int(year), image_set))
    return parts


def read_image_set(year_dir: Path, split: str) -> List[str]:
    """File ids listed in ``{year_dir}/ImageSets/Main/{split}.txt`` (blank lines ignored).

    Raises:
        VocFormatError: if the list file does not exist.
    """
    path = Path(year_dir) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise VocFormatError(f"image set list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _text(node, tag: str, where: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise VocFormatError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(node, tag: str, where: Path, context: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise VocFormatError(f"{where}: <{tag}> of {context} is {text!r}, not a number; fix that field") from None


def parse_voc_xml(xml_path: Path, class_names: Sequence[str] = VOC_CLASSES, keep_difficult: bool = True,
                  image_dir: Path | None = None, known_names: Sequence[str] | None = None) -> VocRecord:
    """Read one annotation file.

    Args:
        xml_path: ``.../Annotations/{file_id}.xml``.
        class_names: classes to keep; labels index this sequence. Other objects are dropped.
        keep_difficult: False drops difficult objects (as VOC evaluation lists do not, but some users want).
        image_dir: folder of the JPEG; defaults to ``../JPEGImages`` next to the annotation folder.
        known_names: the dataset's whole class list; an object named outside it is an error (None: no check).

    Raises:
        VocFormatError: unreadable XML, a missing size / name / bndbox field, a non-numeric size, difficult
            or box coordinate (the message names the file, the field and the object), or an object whose name
            is not in ``known_names`` (names the file and the name).
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as err:
        raise VocFormatError(f"cannot read VOC annotation {xml_path}: {err}") from err
    size = root.find("size")
    if size is None:
        raise VocFormatError(f"{xml_path}: missing <size>")
    height, width = (int(_number(size, tag, xml_path, "<size>")) for tag in ("height", "width"))
    boxes, labels, difficult = [], [], []
    for obj in root.findall("object"):
        name = _text(obj, "name", xml_path)
        if known_names is not None and name not in known_names:
            raise VocFormatError(f"{xml_path}: object name {name!r} is not in the class list {list(known_names)}; "
                                 f"add it to data.class_names or fix the annotation")
        if name not in class_names:
            continue
        diff_node = obj.find("difficult")
        is_difficult = diff_node is not None and diff_node.text is not None and _number(
            obj, "difficult", xml_path, f"object {name!r}") == 1
        if is_difficult and not keep_difficult:
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VocFormatError(f"{xml_path}: object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (_number(bndbox, tag, xml_path, f"object {name!r}")
                          for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x0 - 1.0, y0 - 1.0, x1, y1])
        labels.append(class_names.index(name))
        difficult.append(is_difficult)
    file_id = xml_path.stem
    image_dir = Path(image_dir) if image_dir is not None else xml_path.parent.parent / "JPEGImages"
    return VocRecord(file_id=file_id, file_name=str(image_dir / f"{file_id}.jpg"), height=height, width=width,
                     boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int32),
                     difficult=np.asarray(difficult, bool))


def load_voc_split(devkit_root: Path, year: int, split: str, class_names: Sequence[str] = VOC_CLASSES,
                   keep_difficult: bool = True, known_names: Sequence[str] | None = None) -> List[VocRecord]:
    """All records of ``VOC{year}/ImageSets/Main/{split}.txt`` in list order.

    Args:
        devkit_root: the ``VOCdevkit`` folder.
        year: 2007 or 2012.
        split: ``train``, ``val``, ``trainval`` or ``test``.
        class_names, keep_difficult, known_names: see :func:`parse_voc_xml`.

    Raises:
        VocFormatError: missing list or annotation file, or a malformed annotation.
    """
    year_dir = Path(devkit_root) / f"VOC{year}"
    records = []
    for file_id in read_image_set(year_dir, split):
        xml_path = year_dir / "Annotations" / f"{file_id}.xml"
        if not xml_path.is_file():
            raise VocFormatError(f"{split} list of VOC{year} names {file_id} but {xml_path} does not exist")
        records.append(parse_voc_xml(xml_path, class_names, keep_difficult, known_names=known_names))
    return records
