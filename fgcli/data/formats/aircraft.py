"""FGVC-Aircraft (fgvc-aircraft-2013b): variant (100), family (70) or manufacturer (30) classes.

Layout: `data/images/<id>.jpg`, `data/images_<level>_{train,val,test}.txt` with lines '<id> <class name with
spaces>', the class lists `data/variants.txt`, `families.txt`, `manufacturers.txt`, and
`data/images_box.txt` with '<id> xmin ymin xmax ymax' (1-based, inclusive). The official split has a
validation set. The bottom 20 rows of every image are a copyright banner that the official protocol
removes: it is recorded as `crop_bottom: 20` and the loaders cut it off.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.data.formats.base import (
    RawDataset,
    checked_relpath,
    classes_with_images,
    find_root,
    parse_floats,
    read_id_map,
    read_lines,
    require_root,
    xyxy_to_xywh,
)
from fgcli.data.manifest import Sample
from fgcli.errors import UserError, unknown_choice

LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
BANNER_PIXELS = 20


def is_root(folder: Path) -> bool:
    return (folder / "images").is_dir() and any((folder / f"images_{lv}_train.txt").is_file() for lv in LEVELS)


def detect(src: Path) -> Path | None:
    return find_root(src, is_root)


def read(src: Path, level: str | None = None, **_: object) -> RawDataset:
    level = level or "variant"
    if level not in LEVELS:
        raise unknown_choice("aircraft --level", level, LEVELS)
    root = require_root(src, "aircraft", is_root, "the data/ folder with images/ and images_variant_train.txt "
                        "(fgvc-aircraft-2013b/data)")
    class_file = root / LEVELS[level]
    classes = [line for _, line in read_lines(class_file)]
    if len(set(classes)) != len(classes):
        raise UserError(f"{class_file} lists a class twice. Re-download the data set.")
    class_index = {c: i for i, c in enumerate(classes)}
    box_file = root / "images_box.txt"
    boxes = read_id_map(box_file, "xmin ymin xmax ymax") if box_file.is_file() else {}
    splits: dict[str, list[Sample]] = {}
    first_split: dict[str, str] = {}
    files = [class_file]
    for split in ("train", "val", "test"):
        list_file = root / f"images_{level}_{split}.txt"
        files.append(list_file)
        samples = []
        for lineno, line in read_lines(list_file):
            where = f"{list_file}:{lineno}"
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise UserError(f"{where}: expected '<image id> <{level} name>', got '{line}'.")
            image_id, name = parts[0], parts[1].strip()
            if image_id in first_split:
                raise UserError(f"{where}: image {image_id} is already listed in the {first_split[image_id]} "
                                "split. The split files are corrupt; re-download the data set.")
            first_split[image_id] = split
            if name not in class_index:
                raise UserError(f"{where}: {level} '{name}' is not in {class_file.name}.")
            box = None
            if image_id in boxes:
                box_line, text = boxes[image_id]
                box = xyxy_to_xywh(*parse_floats(text, 4, f"{box_file}:{box_line}", "box"), one_based=True)
            samples.append(Sample(checked_relpath(f"images/{image_id}.jpg", where), class_index[name], box))
        splits[split] = samples
    classes_with_images(classes, splits, str(root))
    if box_file.is_file():
        files.append(box_file)
    name = root.parent.name if root.name == "data" else root.name
    meta = {"level": level, "crop_bottom": BANNER_PIXELS}
    return RawDataset(name=name, format="aircraft", root=root, classes=classes, splits=splits, meta=meta,
                      index_files=files)
