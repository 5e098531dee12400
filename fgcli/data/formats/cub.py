"""CUB-200-2011 (and the shared reader for NABirds, which uses the same index files).

Layout: `CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt,
bounding_boxes.txt, images/<class>/<file>.jpg}`; every index line is '<image id> <value>', the split flag is
1 for train and 0 for test, boxes are 'x y width height' in pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fgcli.console import log
from fgcli.data.formats.base import (
    RawDataset,
    checked_relpath,
    classes_with_images,
    find_root,
    parse_floats,
    parse_int,
    read_id_map,
    require_root,
)
from fgcli.data.manifest import Sample
from fgcli.errors import UserError

INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def is_root(folder: Path) -> bool:
    return all((folder / f).is_file() for f in INDEX_FILES) and not (folder / "hierarchy.txt").is_file()


def detect(src: Path) -> Path | None:
    return find_root(src, is_root)


def read(src: Path, **_: object) -> RawDataset:
    root = require_root(src, "cub", is_root, "images.txt, image_class_labels.txt, train_test_split.txt and "
                        "classes.txt (the CUB_200_2011 folder)")
    classes_map = read_id_map(root / "classes.txt", "class name")
    ids = sorted(classes_map, key=lambda k: parse_int(k, str(root / "classes.txt"), "class id"))
    class_index = {k: i for i, k in enumerate(ids)}
    classes = [classes_map[k][1] for k in ids]
    return read_indexed(root, "cub", classes, class_index, key=lambda k: k)


def read_indexed(root: Path, fmt: str, classes: list[str], class_index: dict[str, int],
                 key: Callable[[str], str], extra_meta: dict | None = None) -> RawDataset:
    """Join images.txt, image_class_labels.txt, train_test_split.txt and (optional) bounding_boxes.txt."""
    images = read_id_map(root / "images.txt", "relative image path", key)
    labels = read_id_map(root / "image_class_labels.txt", "class id", key)
    flags = read_id_map(root / "train_test_split.txt", "1 (train) or 0 (test)", key)
    box_file = root / "bounding_boxes.txt"
    boxes = read_id_map(box_file, "x y width height", key) if box_file.is_file() else {}
    if not boxes:
        log.info(f"{fmt}: no bounding_boxes.txt in {root}; samples get no boxes")
    image_dir = "images"
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for image_id, (lineno, rel) in images.items():
        where = f"{root / 'images.txt'}:{lineno}"
        path = checked_relpath(f"{image_dir}/{rel}", where)
        if image_id not in labels:
            raise UserError(f"{where}: image id '{image_id}' has no line in image_class_labels.txt. "
                            "The index files do not match; re-download the data set.")
        label_line, label_text = labels[image_id]
        if label_text not in class_index:
            raise UserError(f"{root / 'image_class_labels.txt'}:{label_line}: class id {label_text} is not in "
                            f"classes.txt (valid: {_id_range(class_index)}).")
        if image_id not in flags:
            raise UserError(f"{where}: image id '{image_id}' has no line in train_test_split.txt.")
        flag_line, flag = flags[image_id]
        if flag not in ("0", "1"):
            raise UserError(f"{root / 'train_test_split.txt'}:{flag_line}: split flag must be 1 (train) or 0 "
                            f"(test), got '{flag}'.")
        box = None
        if image_id in boxes:
            box_line, box_text = boxes[image_id]
            x, y, w, h = parse_floats(box_text, 4, f"{box_file}:{box_line}", "box")
            box = (x, y, w, h) if w > 0 and h > 0 else None
        splits["train" if flag == "1" else "test"].append(Sample(path, class_index[label_text], box))
    classes_with_images(classes, splits, str(root))
    files = [root / f for f in (*INDEX_FILES, "bounding_boxes.txt") if (root / f).is_file()]
    return RawDataset(name=root.name, format=fmt, root=root, classes=classes, splits=splits,
                      meta=dict(extra_meta or {}), index_files=files)


def _id_range(class_index: dict[str, int]) -> str:
    keys = list(class_index)
    return f"{keys[0]} .. {keys[-1]}" if len(keys) > 1 else keys[0]
