"""The prepared data set on disk: `dataset.yaml` + one CSV per split (`path,label[,x,y,w,h][,mask]`).

Paths in the CSVs are relative to `source_root` (forward slashes, never `..` or absolute). Writing replaces
every file atomically; all new files are fully written before the first one replaces an old one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from fgcli.errors import UserError
from fgcli.io import atomic_open

SPLITS = ("train", "val", "test")
BOX_COLUMNS = ("x", "y", "w", "h")
MANIFEST_VERSION = 1


@dataclass
class Sample:
    """One image: its path relative to the source root, its class index, optional box and part mask."""

    path: str
    label: int
    box: tuple[float, float, float, float] | None = None  # x, y, w, h in original-image pixels
    mask: str | None = None  # relative path of a part-mask PNG (demo data)


@dataclass
class PreparedDataset:
    """A prepared data set: classes, samples per split, and the `dataset.yaml` contents in `meta`."""

    root: Path  # the prepared folder (dataset.yaml, CSVs)
    name: str
    format: str
    source_root: Path  # image paths are relative to this folder
    classes: list[str]
    splits: dict[str, list[Sample]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def crop_bottom(self) -> int:
        """Pixels to cut from the bottom of every image before transforms (FGVC-Aircraft banner)."""
        return int(self.meta.get("crop_bottom", 0) or 0)

    def split(self, name: str) -> list[Sample]:
        """The samples of one split, with a clear error when the split is missing or empty."""
        samples = self.splits.get(name)
        if not samples:
            have = ", ".join(f"{k} ({len(v)})" for k, v in self.splits.items() if v) or "none"
            raise UserError(f"split '{name}' is missing or empty in {self.root}. Splits with images: {have}. "
                            "Choose one of those, or prepare the data again with a non-zero --val-fraction.")
        return samples


def safe_relpath(raw: str) -> str:
    """Normalise a manifest path to a forward-slash relative path; ValueError if it could leave the root."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise ValueError("empty path")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or text.startswith("~"):
        raise ValueError(f"absolute path '{raw}' is not allowed; paths must be relative to the data root")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path '{raw}' contains '..'; paths must stay inside the data root")
    if not parts:
        raise ValueError(f"path '{raw}' names no file")
    return "/".join(parts)


def samples_to_csv(samples: list[Sample]) -> str:
    """CSV text for one split; box and mask columns appear when any sample has them."""
    with_box = any(s.box is not None for s in samples)
    with_mask = any(s.mask is not None for s in samples)
    header = ["path", "label"] + (list(BOX_COLUMNS) if with_box else []) + (["mask"] if with_mask else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for s in samples:
        row: list[Any] = [s.path, s.label]
        if with_box:
            row += [_fmt(v) for v in s.box] if s.box is not None else ["", "", "", ""]
        if with_mask:
            row.append(s.mask or "")
        writer.writerow(row)
    return buf.getvalue()


def bad_images_to_csv(bad: list[tuple[str, str]]) -> str:
    """CSV text of (path, reason) rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(bad)
    return buf.getvalue()


def write_prepared(out: Path, meta: dict[str, Any], splits: dict[str, list[Sample]],
                   bad: list[tuple[str, str]]) -> None:
    """Write dataset.yaml, train/val/test.csv and bad_images.csv into `out`, all or (almost) nothing.

    Every file is first written and fsynced as a temp file; only then are they renamed into place, with
    dataset.yaml last, so an error while writing leaves the previous prepared folder untouched.
    """
    files = {f"{name}.csv": samples_to_csv(splits.get(name, [])) for name in SPLITS}
    files["bad_images.csv"] = bad_images_to_csv(bad)
    files["dataset.yaml"] = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # ExitStack exits in reverse order: enter dataset.yaml first so that it is renamed last.
        for name in reversed(list(files)):
            handle = stack.enter_context(atomic_open(out / name, "w", encoding="utf-8", newline=""))
            handle.write(files[name])


def load_prepared(folder: str | Path) -> PreparedDataset:
    """Read a prepared folder (dataset.yaml + split CSVs), validating paths and labels."""
    root = Path(folder).expanduser().resolve()
    meta_path = root / "dataset.yaml"
    if not meta_path.is_file():
        raise UserError(f"{root} is not a prepared data set (no dataset.yaml). Run `fgcli prepare-data FORMAT "
                        f"{folder}` first, or pass the raw data set folder to --data.")
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not valid YAML ({str(e).splitlines()[0]}). Prepare the data again.") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list) or not meta["classes"]:
        raise UserError(f"{meta_path} has no 'classes' list. Prepare the data again with `fgcli prepare-data`.")
    classes = [str(c) for c in meta["classes"]]
    if meta.get("format") == "demo" or meta.get("source_root") in (None, "."):
        source_root = root  # self-contained (demo): keep working when the folder is moved
    else:
        source_root = Path(str(meta["source_root"]))
        if not source_root.is_absolute():
            source_root = (root / source_root).resolve()
    if not source_root.is_dir():
        raise UserError(f"the images of {root} were in {source_root}, which no longer exists. Move the data "
                        "back, or run `fgcli prepare-data` again on its new location.")
    splits = {name: read_split_csv(root / f"{name}.csv", len(classes)) for name in SPLITS
              if (root / f"{name}.csv").is_file()}
    if not splits.get("train") and not splits.get("test"):
        raise UserError(f"{root} has no train.csv or test.csv with images. Prepare the data again.")
    return PreparedDataset(root=root, name=str(meta.get("name", root.name)), format=str(meta.get("format", "?")),
                           source_root=source_root, classes=classes, splits=splits, meta=meta)


def read_split_csv(path: Path, num_classes: int) -> list[Sample]:
    """Parse one split CSV, with file:line errors for bad paths, labels and boxes."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text. Prepare the data again.") from e
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "path" not in fields or "label" not in fields:
        raise UserError(f"{path} needs a header with 'path' and 'label' columns, found {fields}.")
    has_box = all(c in fields for c in BOX_COLUMNS)
    samples = []
    for lineno, row in enumerate(reader, start=2):
        where = f"{path}:{lineno}"
        try:
            rel = safe_relpath(row["path"] or "")
        except ValueError as e:
            raise UserError(f"{where}: {e}.") from None
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            raise UserError(f"{where}: label '{row['label']}' is not an integer class index.") from None
        if not 0 <= label < num_classes:
            raise UserError(f"{where}: label {label} is out of range for {num_classes} classes in dataset.yaml.")
        box = parse_box([row.get(c) for c in BOX_COLUMNS], where) if has_box else None
        mask = row.get("mask") or None
        if mask:
            try:
                mask = safe_relpath(mask)
            except ValueError as e:
                raise UserError(f"{where}: mask {e}.") from None
        samples.append(Sample(rel, label, box, mask))
    return samples


def parse_box(values: list[str | None], where: str) -> tuple[float, float, float, float] | None:
    if all(v in (None, "") for v in values):
        return None
    try:
        x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{where}: box {values} must be four numbers x,y,w,h (or all empty).") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise UserError(f"{where}: box {values} needs finite values and positive width and height.")
    return (x, y, w, h)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
