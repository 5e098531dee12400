"""NABirds: CUB-style index files plus `hierarchy.txt`; the classes are the leaf classes that have images.

Image ids are UUIDs, written with dashes in the index files (dashes and case are ignored when joining);
`classes.txt` lines are '<class id> <name with spaces>', `hierarchy.txt` lines are '<child id> <parent id>'.
Class ids are sparse (0 .. 1010), so the classes used by images are remapped to 0..C-1 in id order.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.console import log
from fgcli.data.formats.base import RawDataset, find_root, parse_int, read_id_map, read_lines, require_root
from fgcli.data.formats.cub import INDEX_FILES, read_indexed
from fgcli.errors import UserError


def is_root(folder: Path) -> bool:
    return all((folder / f).is_file() for f in INDEX_FILES) and (folder / "hierarchy.txt").is_file()


def detect(src: Path) -> Path | None:
    return find_root(src, is_root)


def image_key(raw: str) -> str:
    """Image ids compare without dashes and case (both spellings occur in NABirds tooling)."""
    return raw.replace("-", "").lower()


def read(src: Path, **_: object) -> RawDataset:
    root = require_root(src, "nabirds", is_root, "images.txt, image_class_labels.txt, train_test_split.txt, "
                        "classes.txt and hierarchy.txt (the nabirds folder)")
    names = {k: v for k, (_, v) in read_id_map(root / "classes.txt", "class name").items()}
    used: set[str] = set()
    label_file = root / "image_class_labels.txt"
    for lineno, line in read_lines(label_file):
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{label_file}:{lineno}: expected '<image id> <class id>', got '{line}'.")
        if parts[1] not in names:
            raise UserError(f"{label_file}:{lineno}: class id {parts[1]} is not in classes.txt.")
        used.add(parts[1])
    parents = _hierarchy(root / "hierarchy.txt")
    inner = sorted(c for c in used if c in set(parents.values()))
    if inner:
        log.warning(f"nabirds: {len(inner)} image label(s) are not leaf classes in hierarchy.txt (e.g. class "
                    f"{inner[0]} '{names[inner[0]]}'); they are kept as classes of their own")
    ids = sorted(used, key=lambda k: parse_int(k, str(label_file), "class id"))
    class_index = {k: i for i, k in enumerate(ids)}
    classes = [names[k] for k in ids]
    meta = {"class_ids": [int(k) for k in ids],
            "parents": [names.get(parents.get(k, ""), "") for k in ids]}
    raw = read_indexed(root, "nabirds", classes, class_index, key=image_key, extra_meta=meta)
    raw.index_files.append(root / "hierarchy.txt")
    return raw


def _hierarchy(path: Path) -> dict[str, str]:
    parents: dict[str, str] = {}
    for lineno, line in read_lines(path):
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}:{lineno}: expected '<child class id> <parent class id>', got '{line}'.")
        parents[parts[0]] = parts[1]
    return parents
