"""What every format reader returns, and helpers for reading official index files robustly."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.data.manifest import Sample, safe_relpath
from fgcli.errors import UserError

# Folders never searched when looking for a data set root inside SRC.
_SKIP_DIRS = {"__MACOSX", "__pycache__", ".git"}


@dataclass
class RawDataset:
    """A data set as read from its source layout, before image checks and val carving.

    `splits` holds "train" and usually "test" (and "val" where the data set defines one); `skipped` lists
    (path, reason) entries the reader could not use but that are no reason to stop (e.g. non-UTF-8 names).
    """

    name: str
    format: str
    root: Path  # absolute; every Sample.path is relative to it
    classes: list[str]
    splits: dict[str, list[Sample]]
    meta: dict[str, Any] = field(default_factory=dict)
    index_files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a text index file.

    Tolerates a UTF-8 BOM, Windows or old-Mac line endings and trailing whitespace.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"index file {path} is missing. Check that the data set was extracted completely.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{lineno} is not valid UTF-8 text. Re-download the file or convert it to "
                        "UTF-8.") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield lineno, line


def read_pairs(path: Path, value_name: str = "value") -> list[tuple[int, str, str]]:
    """Parse '<key> <value...>' lines (the value may contain spaces) into (lineno, key, value)."""
    pairs = []
    for lineno, line in read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"{path}:{lineno}: expected '<id> <{value_name}>', got '{line}'.")
        pairs.append((lineno, parts[0], parts[1].strip()))
    return pairs


def read_id_map(path: Path, value_name: str, key: Callable[[str], str] = str) -> dict[str, tuple[int, str]]:
    """'<id> <value>' lines as {id: (lineno, value)}, with an error on a duplicate id."""
    result: dict[str, tuple[int, str]] = {}
    for lineno, raw_key, value in read_pairs(path, value_name):
        k = key(raw_key)
        if k in result:
            raise UserError(f"{path}:{lineno}: duplicate id '{raw_key}' (first on line {result[k][0]}). "
                            "The index file is corrupt; re-download the data set.")
        result[k] = (lineno, value)
    return result


def parse_int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value.is_integer():
            return int(value)
        raise UserError(f"{where}: {what} '{text}' is not an integer.") from None


def parse_floats(text: str, count: int, where: str, what: str) -> list[float]:
    parts = text.split()
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise UserError(f"{where}: {what} must be {count} numbers, got '{text}'.")
    return values


def checked_relpath(raw: str, where: str) -> str:
    try:
        return safe_relpath(raw)
    except ValueError as e:
        raise UserError(f"{where}: {e}.") from None


def xyxy_to_xywh(x1: float, y1: float, x2: float, y2: float, one_based: bool) -> tuple[float, float, float, float] | None:
    """Inclusive corner pixels (1-based MATLAB style when `one_based`) -> 0-based x, y, w, h; None if empty."""
    shift = 1.0 if one_based else 0.0
    w, h = x2 - x1 + 1.0, y2 - y1 + 1.0
    if w <= 0 or h <= 0:
        return None
    return (x1 - shift, y1 - shift, w, h)


def find_root(src: Path, is_root: Callable[[Path], bool], max_depth: int = 2) -> Path | None:
    """`src` or the shallowest folder below it (breadth first, sorted) for which `is_root` holds."""
    level = [src]
    for _ in range(max_depth + 1):
        for folder in level:
            if is_root(folder):
                return folder
        level = [child for folder in level for child in subdirs(folder)]
        if not level:
            break
    return None


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted (scandir: no stat per file, fast on image folders)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")
                          and e.name not in _SKIP_DIRS)
    except OSError:
        return []


def require_root(src: Path, fmt: str, is_root: Callable[[Path], bool], expect: str, max_depth: int = 2) -> Path:
    """Like find_root, but a clear error naming what was expected when nothing matches."""
    if not src.exists():
        raise UserError(f"{src} does not exist. Check the SRC path.")
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; the {fmt} format expects the extracted data set folder.")
    root = find_root(src, is_root, max_depth)
    if root is None:
        article = "an" if fmt[:1].lower() in "aeiou" else "a"
        raise UserError(f"{src} does not look like {article} {fmt} data set: expected {expect} in it or up to "
                        f"{max_depth} levels below. Point SRC at the extracted folder.")
    return root.resolve()


def classes_with_images(classes: list[str], splits: dict[str, list[Sample]], where: str) -> None:
    """Error when a declared class has no image in any split."""
    seen = {s.label for samples in splits.values() for s in samples}
    empty = [c for i, c in enumerate(classes) if i not in seen]
    if empty:
        shown = ", ".join(repr(c) for c in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise UserError(f"{where}: {len(empty)} class(es) have no images: {shown}. The data set is incomplete; "
                        "re-extract it or remove those classes from the index.")
