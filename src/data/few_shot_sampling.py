"""Draw K-shot few-shot splits in the TFA formats, seeded and reproducible.

Follows ucbdrive/few-shot-object-detection ``datasets/prepare_coco_few_shot.py`` and
``datasets/prepare_voc_few_shot.py``, using a ``random.Random(seed)`` exactly where TFA calls
``random.seed(seed)`` and the module-level ``random.sample``, so the draws are the same sequence of calls.

COCO (per seed, one generator; classes in ascending id order; shots in ascending order, nested: the K-shot
set of a class contains its smaller-shot sets):

* a class's candidates are its images with non-crowd annotations of that class, each worth all of them;
* repeatedly sample ``K`` candidate images and, in sampled order, add an unused image whose annotations still
  fit into K, until exactly K annotations are chosen; the split file lists the chosen images, their
  annotations of the class and all categories.

Where TFA would loop forever, this draw does not: when no set of unused images completes the smaller-shot
draw to exactly K (e.g. a class with fewer than K instances, or only images with many), the target drops to
the largest count they can make and a warning names the class; and an image whose addition would leave the
target unreachable is passed over (TFA takes it and never finishes). A class without instances gets a file
without images (TFA stops with an error). Both checks are subset sums on the per-image counts; whenever TFA
terminates they never fire and the result is TFA's.

VOC (per seed, one generator; classes in ``VOC_CLASSES`` order; shots ascending, nested):

* a class's candidates are the annotation files of the listed image sets (TFA: 2007 + 2012 trainval) that
  contain an object of the class (difficult ones included, as TFA counts them);
* for each shot, sample ``K - previous K`` candidates (1 for the first shot, as TFA) and add them in sampled
  order, counting the class's objects, until that many objects were added; a list line is
  ``datasets/{<folder>}/JPEGImages/{<filename>}`` from the XML, as TFA writes it.

Deviations from TFA's VOC script: an image already in the list is not added again (TFA compares annotation
paths against image paths, so its check never matches and the same image can be listed twice, TFA issue
#132); the draw takes at most the number of candidates (TFA fails when there are fewer), and a class without
candidates gets an empty list. The first shot draws ``shots[0]`` images rather than always 1 (equal for
TFA's shots 1, 2, 3, 5, 10).
"""

from __future__ import annotations

import json
import logging
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from src.data.coco import load_coco_json
from src.data.voc import (
    VOC_CLASSES,
    VocFormatError,
    parse_split_spec,
    read_image_set,
    voc_annotation_path,
    year_of_file_id,
)
from src.fileio import atomic_write_text

logger = logging.getLogger(__name__)

COCO_SHOTS = (1, 2, 3, 5, 10, 30)
VOC_SHOTS = (1, 2, 3, 5, 10)
MAX_ATTEMPTS = 1_000_000
"""Sampling rounds per (class, shot) before giving up; a reachable target is normally met in a few."""


def _best_reachable(counts: Sequence[int], need: int) -> int:
    """Largest total <= ``need`` that a subset of ``counts`` sums to (bitset subset sum)."""
    mask = (1 << (need + 1)) - 1
    reachable = 1
    for count in counts:
        reachable |= (reachable << count) & mask
        if reachable >> need & 1:
            return need
    return reachable.bit_length() - 1


def sample_coco_class(rng: random.Random, image_anns: Dict[int, List[dict]], shots: Sequence[int],
                      class_name: str = "") -> Dict[int, Tuple[List[int], List[dict]]]:
    """TFA's nested K-shot draw for one class.

    Args:
        rng: the seed's generator, shared by all classes in id order (TFA's global ``random``).
        image_anns: image id -> that image's non-crowd annotations of the class, in annotation-file order.
        shots: ascending shot counts.
        class_name: for the warning when K cannot be reached exactly.

    Returns:
        shot -> (chosen image ids in order, chosen annotations in order). The annotation count is K when
        unused whole images can complete the smaller-shot draw to K, else the largest count they can make.

    Raises:
        RuntimeError: the target not met in ``MAX_ATTEMPTS`` sampling rounds.
    """
    keys = list(image_anns)
    chosen_imgs: List[int] = []
    chosen_anns: List[dict] = []
    used = set()
    result = {}
    for shot in shots:
        need = shot - len(chosen_anns)
        best = _best_reachable([len(image_anns[k]) for k in keys if k not in used], need)
        if best < need:
            logger.warning("class %s: %d of %d instances reachable at %d shots with whole images", class_name,
                           len(chosen_anns) + best, shot, shot)
        target = len(chosen_anns) + best
        rounds = 0
        while len(chosen_anns) < target:
            if rounds == MAX_ATTEMPTS:
                raise RuntimeError(f"class {class_name}: {target} instances at {shot} shots not reached after "
                                   f"{MAX_ATTEMPTS} sampling rounds")
            rounds += 1
            for img in rng.sample(keys, min(shot, len(keys))):
                if img in used or len(image_anns[img]) + len(chosen_anns) > target:
                    continue
                if not _completable(image_anns, keys, used | {img}, target - len(chosen_anns) - len(image_anns[img])):
                    # TFA would take it and then loop forever; when TFA terminates this never happens.
                    continue
                used.add(img)
                chosen_imgs.append(img)
                chosen_anns.extend(image_anns[img])
                if len(chosen_anns) == target:
                    break
        result[shot] = (list(chosen_imgs), list(chosen_anns))
    return result


def _completable(image_anns: Dict[int, List[dict]], keys: Sequence[int], used: set, need: int) -> bool:
    """Whether unused whole images can add exactly ``need`` annotations."""
    if need == 0:
        return True
    counts = [len(image_anns[k]) for k in keys if k not in used]
    # Enough single-annotation images settle it without the subset sum (the usual case on full COCO).
    return sum(c == 1 for c in counts) >= need or _best_reachable(counts, need) == need


def coco_few_shot_splits(data: dict, seed: int, shots: Sequence[int] = COCO_SHOTS) -> Dict[str, Dict[int, dict]]:
    """All classes' K-shot split JSONs of one seed from a COCO instances dict (TFA ``generate_seeds``).

    Returns:
        class name -> shot -> COCO dict with ``images`` (chosen, full entries), ``annotations`` (chosen),
        ``categories`` (all, as in ``data``) and ``info`` / ``licenses`` when ``data`` has them.
    """
    rng = random.Random(seed)
    images = {img["id"]: img for img in data["images"]}
    categories = sorted(data["categories"], key=lambda c: c["id"])
    per_class: Dict[int, Dict[int, List[dict]]] = {c["id"]: {} for c in categories}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0) == 1 or ann["category_id"] not in per_class:
            continue
        per_class[ann["category_id"]].setdefault(ann["image_id"], []).append(ann)
    extra = {key: data[key] for key in ("info", "licenses") if key in data}
    out: Dict[str, Dict[int, dict]] = {}
    for cat in categories:
        drawn = sample_coco_class(rng, per_class[cat["id"]], shots, cat["name"])
        out[cat["name"]] = {shot: {**extra, "images": [images[i] for i in img_ids], "annotations": anns,
                                   "categories": data["categories"]}
                            for shot, (img_ids, anns) in drawn.items()}
    return out


def seed_folder(output_dir, seed: int, seed0_at_root: bool) -> Path:
    """``output_dir/seed{S}``; seed 0 at ``output_dir`` itself when ``seed0_at_root`` (TFA layout)."""
    return Path(output_dir) if seed == 0 and seed0_at_root else Path(output_dir) / f"seed{seed}"


def write_coco_few_shot(annotation_file, output_dir, seeds: Sequence[int], shots: Sequence[int] = COCO_SHOTS,
                        seed0_at_root: bool = False) -> List[Path]:
    """Write ``full_box_{K}shot_{class}_trainval.json`` for every class, shot and seed.

    Args:
        annotation_file: COCO instances JSON to draw from (TFA: ``cocosplit/datasplit/trainvalno5k.json``).
        output_dir: the ``cocosplit`` folder to fill; seed S goes to ``seed{S}/`` (seed 0 at the root with
            ``seed0_at_root``, else in ``seed0/`` as DeFRCN reads it).
        seeds: the seeds to draw.
        shots: ascending shot counts.
        seed0_at_root: TFA layout for seed 0.

    Returns:
        The written files. Every split is drawn before anything is written, and each file is written
        atomically (``src.fileio``).

    Raises:
        src.data.coco.CocoFormatError: unreadable or malformed annotation file (names it).
        ValueError: shots not strictly ascending positive integers.
    """
    _check_shots(shots)
    data = load_coco_json(annotation_file)
    pending = []
    for seed in seeds:
        folder = seed_folder(output_dir, seed, seed0_at_root)
        for name, per_shot in coco_few_shot_splits(data, seed, shots).items():
            for shot, split in per_shot.items():
                pending.append((folder / f"full_box_{shot}shot_{name}_trainval.json", json.dumps(split)))
    return [atomic_write_text(path, text) for path, text in pending]


def _check_shots(shots: Sequence[int]) -> None:
    if not shots or any(int(s) < 1 for s in shots) or list(shots) != sorted(set(shots)):
        raise ValueError(f"shots must be strictly ascending positive integers, got {list(shots)}")


# ----------------------------------------------------------------------------------------------------- VOC
def _voc_objects(xml_path: Path) -> Tuple[List[str], str]:
    """(object class names, TFA list line ``datasets/{folder}/JPEGImages/{filename}``) of one annotation."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as err:
        raise VocFormatError(f"cannot read VOC annotation {xml_path}: {err}") from err
    names = []
    for obj in root.findall("object"):
        name = obj.find("name")
        if name is None or name.text is None:
            raise VocFormatError(f"{xml_path}: an <object> has no <name>")
        names.append(name.text.strip())
    folder, filename = root.findtext("folder"), root.findtext("filename")
    if not folder or not filename:
        folder, filename = f"VOC{year_of_file_id(xml_path.stem)}", f"{xml_path.stem}.jpg"
    return names, f"datasets/{folder.strip()}/JPEGImages/{filename.strip()}"


def voc_candidates(devkit, image_sets: str = "2007_trainval+2012_trainval") -> Dict[str, List[Tuple[str, int]]]:
    """Class -> [(list line, number of objects of the class)] for images holding the class, in list order.

    Raises:
        VocFormatError: a missing list or annotation file, or a malformed annotation (names it).
    """
    devkit = Path(devkit)
    file_ids = [i for year, image_set in parse_split_spec(image_sets)
                for i in read_image_set(devkit / f"VOC{year}", image_set)]
    per_class: Dict[str, List[Tuple[str, int]]] = {c: [] for c in VOC_CLASSES}
    for file_id in file_ids:
        xml_path = voc_annotation_path(devkit, file_id)
        if not xml_path.is_file():
            raise VocFormatError(f"VOC annotation {xml_path} (listed in {image_sets}) does not exist")
        names, line = _voc_objects(xml_path)
        for cls in sorted(set(names)):
            if cls not in per_class:
                raise VocFormatError(f"{xml_path}: unknown VOC class {cls!r}")
            per_class[cls].append((line, names.count(cls)))
    return per_class


def voc_few_shot_lists(candidates: Dict[str, List[Tuple[str, int]]], seed: int,
                       shots: Sequence[int] = VOC_SHOTS) -> Dict[str, Dict[int, List[str]]]:
    """TFA's nested VOC draw for one seed: class -> shot -> list lines (module docstring)."""
    rng = random.Random(seed)
    out: Dict[str, Dict[int, List[str]]] = {}
    for cls in VOC_CLASSES:
        pool = candidates[cls]
        lines: List[str] = []
        out[cls] = {}
        for j, shot in enumerate(shots):
            wanted = shot - shots[j - 1] if j else shot
            added = 0
            for line, count in rng.sample(pool, min(wanted, len(pool))):
                if line in lines:
                    continue
                lines.append(line)
                added += count
                if added >= wanted:
                    break
            out[cls][shot] = list(lines)
        if not pool:
            logger.warning("VOC class %s has no image in the chosen image sets: its lists are empty", cls)
    return out


def write_voc_few_shot(devkit, output_dir, seeds: Sequence[int], shots: Sequence[int] = VOC_SHOTS,
                       image_sets: str = "2007_trainval+2012_trainval", seed0_at_root: bool = False) -> List[Path]:
    """Write ``box_{K}shot_{class}_train.txt`` for every VOC class, shot and seed.

    Args:
        devkit: the VOCdevkit folder (``VOC2007/``, ``VOC2012/``).
        output_dir: the ``vocsplit`` folder to fill (seed layout as :func:`write_coco_few_shot`).
        seeds, shots, seed0_at_root: as :func:`write_coco_few_shot`.
        image_sets: the image lists to draw from.

    Returns:
        The written files (drawn first, then each written atomically).

    Raises:
        VocFormatError: a missing or malformed list or annotation (names it).
        ValueError: bad shots.
    """
    _check_shots(shots)
    candidates = voc_candidates(devkit, image_sets)
    pending = []
    for seed in seeds:
        folder = seed_folder(output_dir, seed, seed0_at_root)
        for cls, per_shot in voc_few_shot_lists(candidates, seed, shots).items():
            for shot, lines in per_shot.items():
                text = "\n".join(lines) + "\n" if lines else ""
                pending.append((folder / f"box_{shot}shot_{cls}_train.txt", text))
    return [atomic_write_text(path, text) for path, text in pending]
