"""ImageFolder trees: `root/<class>/**/*.jpg`, or `root/{train,val,test}/<class>/**/*.jpg`.

Class names are the folder names (sorted). Hidden files (macOS '._x.jpg'), non-image files and folders
that are not classes are ignored; file names that are not valid UTF-8 are listed as skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from fgcli.console import log
from fgcli.data.formats.base import RawDataset, subdirs
from fgcli.data.images import is_image_name
from fgcli.data.manifest import Sample
from fgcli.errors import UserError

SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "test", "testing": "test"}


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in subdirs(root):
        split = SPLIT_DIRS.get(folder.name.lower())
        if split and split not in found:
            found[split] = folder
    return found


def _has_images(folder: Path, limit: int = 2000) -> bool:
    """True if `folder` holds an image file within its first `limit` entries (recursively)."""
    seen = 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image_name(f) for f in files):
            return True
        seen += len(files)
        if seen > limit:
            return False
    return False


def detect(src: Path) -> Path | None:
    """`src` if it is a class tree (or has train/val/test class trees), else None."""
    if not src.is_dir():
        return None
    splits = _split_dirs(src)
    if "train" in splits or "test" in splits:
        return src if any(_has_images(d) for s in splits.values() for d in subdirs(s)) else None
    classes = [d for d in subdirs(src) if _has_images(d)]
    return src if len(classes) >= 2 else None


def read(src: Path, **_: object) -> RawDataset:
    if not src.is_dir():
        raise UserError(f"{src} is not a folder. The imagefolder format expects ROOT/<class>/*.jpg or "
                        "ROOT/train/<class>/*.jpg.")
    root = src.resolve()
    split_dirs = _split_dirs(root)
    if split_dirs:
        if "train" not in split_dirs:
            raise UserError(f"{root} has {', '.join(d.name for d in split_dirs.values())}/ but no train/ folder. "
                            "Add ROOT/train/<class>/ images, or use ROOT/<class>/ without split folders.")
        others = [d.name for d in subdirs(root) if d not in split_dirs.values()]
        if others:
            log.warning(f"imagefolder: ignoring folder(s) beside the split folders: {', '.join(others[:5])}")
        trees = {split: folder for split, folder in split_dirs.items()}
    else:
        trees = {"train": root}
    class_dirs = {split: {d.name: d for d in subdirs(folder)} for split, folder in trees.items()}
    classes = sorted({name for dirs in class_dirs.values() for name in dirs})
    if not classes:
        raise UserError(f"{trees['train']} has no class sub-folders. Expected ROOT/<class>/*.jpg.")
    _check_names(classes, root)
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    skipped: list[tuple[str, str]] = []
    for split, dirs in class_dirs.items():
        samples = []
        for name, folder in sorted(dirs.items()):
            found = _images(folder, root, skipped)
            if not found and split == "train":
                raise UserError(f"class folder {folder} has no images. Add images or remove the folder.")
            samples += [Sample(rel, index[name]) for rel in found]
        splits[split] = samples
    return RawDataset(name=root.name, format="imagefolder", root=root, classes=classes, splits=splits,
                      skipped=skipped)


def _images(folder: Path, root: Path, skipped: list[tuple[str, str]]) -> list[str]:
    found = []
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not is_image_name(name):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
                skipped.append((shown, "file name is not valid UTF-8; rename the file"))
                continue
            found.append(rel)
    return found


def _check_names(classes: list[str], root: Path) -> None:
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            raise UserError(f"class folder '{shown}' in {root} is not a valid UTF-8 name. Rename the folder.") from None
