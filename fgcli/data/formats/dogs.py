"""Stanford Dogs (120 breeds).

Layout: `Images/n02085620-Chihuahua/n02085620_10074.jpg`, the split lists `train_list.mat` / `test_list.mat`
(from lists.tar; beside Images/ or in lists/) with `file_list` (paths relative to Images/) and `labels`
(1-based), optional `Annotation/<folder>/<file stem>` PASCAL-VOC XML boxes. Plain-text lists
`train_list.txt` / `test_list.txt` ('<relative path> [label]' per line) are accepted as well. Class names are
the breed part of the folder name ('Chihuahua'); the WordNet ids are kept in dataset.yaml.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from fgcli.console import log
from fgcli.data.formats.base import (
    RawDataset,
    checked_relpath,
    find_root,
    parse_int,
    read_lines,
    require_root,
)
from fgcli.data.formats.matfile import load_mat, mat_field, numbers, strings
from fgcli.data.manifest import Sample
from fgcli.errors import UserError

LIST_DIRS = (".", "lists", "splits")


def _images_dir(folder: Path) -> Path | None:
    for name in ("Images", "images"):
        if (folder / name).is_dir():
            return folder / name
    return None


def _list_file(folder: Path, split: str) -> Path | None:
    for sub in LIST_DIRS:
        for ext in (".mat", ".txt"):
            path = folder / sub / f"{split}_list{ext}"
            if path.is_file():
                return path
    return None


def is_root(folder: Path) -> bool:
    return _images_dir(folder) is not None and _list_file(folder, "train") is not None


def detect(src: Path) -> Path | None:
    return find_root(src, is_root)


def read(src: Path, **_: object) -> RawDataset:
    root = require_root(src, "dogs", is_root, "Images/ and train_list.mat / test_list.mat (from lists.tar, "
                        "beside Images/ or in lists/)")
    images = _images_dir(root)
    assert images is not None
    folders = sorted(p.name for p in images.iterdir() if p.is_dir())
    entries: dict[str, list[tuple[str, int | None, str]]] = {}
    files = []
    for split in ("train", "test"):
        list_file = _list_file(root, split)
        if list_file is None:
            raise UserError(f"{root}: {split}_list.mat not found (looked beside Images/ and in lists/). Extract "
                            "lists.tar into the data set folder.")
        files.append(list_file)
        entries[split] = _read_list(list_file)
    classes, wnids, folder_label = _classes(entries, folders, root)
    annotations = root / "Annotation"
    prefix = images.name
    splits: dict[str, list[Sample]] = {}
    seen: dict[str, str] = {}
    for split, rows in entries.items():
        samples = []
        for rel, label, where in rows:
            rel = checked_relpath(rel, where)
            if rel in seen:
                raise UserError(f"{where}: {rel} is already listed in the {seen[rel]} split. The lists are corrupt.")
            seen[rel] = split
            folder = rel.split("/", 1)[0]
            index = folder_label.get(folder)
            if index is None:
                raise UserError(f"{where}: folder '{folder}' of {rel} is not a breed folder in {images}.")
            if label is not None and label != index:
                raise UserError(f"{where}: label {label + 1} of {rel} disagrees with the other files of "
                                f"folder {folder} (label {index + 1}). The list is corrupt.")
            box = _box(annotations / folder / Path(rel).stem) if annotations.is_dir() else None
            samples.append(Sample(f"{prefix}/{rel}", index, box))
        splits[split] = samples
    if not annotations.is_dir():
        log.info(f"dogs: no Annotation/ folder in {root}; samples get no boxes")
    return RawDataset(name=root.name, format="dogs", root=root, classes=classes, splits=splits,
                      meta={"wnids": wnids}, index_files=files)


def _read_list(path: Path) -> list[tuple[str, int | None, str]]:
    """(path relative to Images/, 0-based label or None, location) for each listed file."""
    if path.suffix == ".mat":
        mat = load_mat(path)
        rels = strings(mat_field(mat, "file_list", path))
        labels = numbers(mat_field(mat, "labels", path), path, "labels") if "labels" in mat else [None] * len(rels)
        if len(labels) != len(rels):
            raise UserError(f"{path}: file_list has {len(rels)} entries but labels has {len(labels)}.")
        return [(rel, None if lab is None else lab - 1, f"{path} (entry {i})")
                for i, (rel, lab) in enumerate(zip(rels, labels, strict=True), start=1)]
    rows = []
    for lineno, line in read_lines(path):
        parts = line.split()
        where = f"{path}:{lineno}"
        label = parse_int(parts[-1], where, "label") - 1 if len(parts) > 1 else None
        rel = " ".join(parts[:-1]) if len(parts) > 1 else parts[0]
        rows.append((rel, label, where))
    return rows


def _classes(entries: dict[str, list[tuple[str, int | None, str]]], folders: list[str],
             root: Path) -> tuple[list[str], list[str], dict[str, int]]:
    """Class order: the official labels when given (1..120 = sorted WordNet folders), else sorted folders."""
    used = sorted({rel.replace("\\", "/").split("/", 1)[0] for rows in entries.values() for rel, _, _ in rows})
    labelled = {rel.replace("\\", "/").split("/", 1)[0]: lab
                for rows in entries.values() for rel, lab, _ in rows if lab is not None}
    if labelled and len(labelled) == len(used):
        order = sorted(used, key=lambda f: labelled[f])
        labels = [labelled[f] for f in order]
        if labels != list(range(len(order))):
            raise UserError(f"{root}: the list labels are not 1..{len(order)} with one breed folder each. "
                            "The lists do not match the Images/ folders.")
    else:
        order = used
    missing = [f for f in order if f not in folders]
    if missing:
        raise UserError(f"{root}: breed folder(s) {', '.join(missing[:3])} listed in the split lists are not in "
                        "Images/. Extract images.tar completely.")
    empty = sorted(set(folders) - set(order))
    if empty:
        log.warning(f"dogs: {len(empty)} folder(s) in Images/ are in no split list and are ignored "
                    f"(e.g. {empty[0]})")
    names = [f.split("-", 1)[1] if "-" in f else f for f in order]
    wnids = [f.split("-", 1)[0] for f in order]
    return names, wnids, {f: i for i, f in enumerate(order)}


def _box(xml_path: Path) -> tuple[float, float, float, float] | None:
    """The largest object box of a PASCAL-VOC annotation, or None."""
    if not xml_path.is_file():
        return None
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError):
        return None
    best = None
    for obj in tree.getroot().iter("bndbox"):
        try:
            x1, y1, x2, y2 = (float(obj.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            continue
        w, h = x2 - x1, y2 - y1
        if w > 0 and h > 0 and (best is None or w * h > best[2] * best[3]):
            best = (x1, y1, w, h)
    return best
