"""A CSV list of images: columns `path,label` and optionally `split` (train/val/test), `x,y,w,h`, `mask`.

SRC is the CSV file (paths relative to its folder) or a folder holding train.csv [val.csv] [test.csv].
Labels are class names; when every label is an integer the classes are ordered numerically. Absolute paths
and paths with '..' are rejected: every image must lie inside the CSV's folder.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fgcli.data.formats.base import RawDataset, checked_relpath
from fgcli.data.formats.imagefolder import SPLIT_DIRS
from fgcli.data.manifest import BOX_COLUMNS, Sample, parse_box
from fgcli.errors import UserError


def detect(src: Path) -> Path | None:
    return src if src.is_file() and src.suffix.lower() == ".csv" else None


def read(src: Path, **_: object) -> RawDataset:
    src = src.resolve() if src.exists() else src
    if src.is_dir():
        if (src / "dataset.yaml").is_file():
            raise UserError(f"{src} is already a prepared data set (it has dataset.yaml); pass it to --data "
                            "directly instead of preparing it again.")
        files = {split: src / f"{split}.csv" for split in ("train", "val", "test") if (src / f"{split}.csv").is_file()}
        if "train" not in files:
            raise UserError(f"{src} has no train.csv. Give a CSV file, or a folder with train.csv [val.csv] "
                            "[test.csv].")
        root, name = src, src.name
    elif src.is_file():
        files, root, name = {"": src}, src.parent, src.stem
    else:
        raise UserError(f"{src} does not exist. Give the path of a CSV file with path,label columns.")
    rows: list[tuple[str, str, str, tuple | None, str | None, str]] = []
    for default_split, path in files.items():
        rows += _read_rows(path, default_split)
    classes = _classes([r[1] for r in rows])
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for rel, label, split, box, mask, _where in rows:
        splits.setdefault(split, []).append(Sample(rel, index[label], box, mask))
    return RawDataset(name=name, format="csv", root=root, classes=classes, splits=splits,
                      index_files=list(files.values()))


def _read_rows(path: Path, default_split: str) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text. Save the CSV as UTF-8.") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "path" not in fields or "label" not in fields:
        raise UserError(f"{path} needs a header row with 'path' and 'label' columns (found: {fields or 'none'}).")
    reader.fieldnames = fields
    has_box = all(c in fields for c in BOX_COLUMNS)
    rows = []
    for lineno, row in enumerate(reader, start=2):
        where = f"{path}:{lineno}"
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        rel = checked_relpath(row.get("path") or "", where)
        label = (row.get("label") or "").strip()
        if not label:
            raise UserError(f"{where}: empty label for {rel}.")
        split = default_split or (row.get("split") or "train").strip().lower()
        if split not in SPLIT_DIRS:
            raise UserError(f"{where}: split '{split}' must be train, val or test.")
        box = parse_box([row.get(c) for c in BOX_COLUMNS], where) if has_box else None
        mask = row.get("mask") or None
        if mask:
            mask = checked_relpath(mask, where)
        rows.append((rel, label, SPLIT_DIRS[split], box, mask, where))
    if not rows:
        raise UserError(f"{path} lists no images. Add rows 'path,label'.")
    return rows


def _classes(labels: list[str]) -> list[str]:
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)
