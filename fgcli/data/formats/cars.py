"""Stanford Cars (196 classes).

Official layout (the three tarballs plus the test labels, extracted side by side):
`cars_train/00001.jpg`, `cars_test/00001.jpg`, `devkit/cars_meta.mat` (`class_names`),
`devkit/cars_train_annos.mat` and `cars_test_annos_withlabels.mat` (beside devkit/ or inside it), whose
`annotations` struct array has `bbox_x1, bbox_y1, bbox_x2, bbox_y2` (1-based inclusive pixels), `class`
(1-based) and `fname`. Also accepted: the Kaggle nesting `cars_train/cars_train/`, `car_devkit/devkit/`,
and the all-in-one release `cars_annos.mat` (`relative_im_path`, `class`, `test`) + `car_ims/`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from fgcli.data.formats.base import RawDataset, checked_relpath, classes_with_images, subdirs, xyxy_to_xywh
from fgcli.data.formats.matfile import load_mat, mat_field, records, strings
from fgcli.data.manifest import Sample
from fgcli.errors import UserError

MAX_DEPTH = 3


def detect(src: Path) -> Path | None:
    if _find(src, "cars_meta.mat", file=True) or _find(src, "cars_annos.mat", file=True):
        return src
    return None


def read(src: Path, **_: object) -> RawDataset:
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; the cars format expects the folder holding cars_train/, "
                        "cars_test/ and devkit/.")
    root = src.resolve()
    meta_file = _find(root, "cars_meta.mat", file=True)
    train_annos = _find(root, "cars_train_annos.mat", file=True)
    if meta_file is None or train_annos is None:
        all_in_one = _find(root, "cars_annos.mat", file=True)
        if all_in_one is not None:
            return _read_all_in_one(root, all_in_one)
        missing = " and ".join(n for n, f in (("devkit/cars_meta.mat", meta_file),
                                               ("devkit/cars_train_annos.mat", train_annos)) if f is None)
        raise UserError(f"{root} does not look like Stanford Cars: {missing} not found (searched {MAX_DEPTH} "
                        "levels deep). Extract car_devkit.tgz into the data set folder.")
    test_annos = _find(root, "cars_test_annos_withlabels.mat", file=True)
    if test_annos is None:
        hint = " (cars_test_annos.mat has no labels)" if _find(root, "cars_test_annos.mat", file=True) else ""
        raise UserError(f"{root}: cars_test_annos_withlabels.mat not found{hint}. Download the test labels "
                        "(cars_test_annos_withlabels.mat) and put the file beside devkit/ or inside it.")
    classes = strings(mat_field(load_mat(meta_file), "class_names", meta_file))
    splits = {"train": _split(root, train_annos, "cars_train", classes),
              "test": _split(root, test_annos, "cars_test", classes)}
    classes_with_images(classes, splits, str(root))
    return RawDataset(name=root.name, format="cars", root=root, classes=classes, splits=splits,
                      index_files=[meta_file, train_annos, test_annos])


def _split(root: Path, annos_file: Path, folder_name: str, classes: list[str]) -> list[Sample]:
    rows = records(load_mat(annos_file), "annotations", annos_file)
    if rows and "class" not in rows[0]:
        raise UserError(f"{annos_file} has no 'class' field (unlabelled test annotations). Use "
                        "cars_test_annos_withlabels.mat.")
    if not rows:
        raise UserError(f"{annos_file} holds no annotations. Re-download it.")
    image_dir = _image_dir(root, folder_name, str(rows[0]["fname"]))
    prefix = image_dir.relative_to(root).as_posix()
    samples, seen = [], set()
    for i, row in enumerate(rows, start=1):
        where = f"{annos_file} (annotation {i})"
        fname = str(row["fname"]).strip()
        if fname in seen:
            raise UserError(f"{where}: duplicate file name '{fname}'. The annotation file is corrupt.")
        seen.add(fname)
        samples.append(Sample(checked_relpath(f"{prefix}/{fname}", where), _label(row["class"], classes, where),
                              _box(row)))
    return samples


def _read_all_in_one(root: Path, annos_file: Path) -> RawDataset:
    mat = load_mat(annos_file)
    classes = strings(mat_field(mat, "class_names", annos_file))
    rows = records(mat, "annotations", annos_file)
    base = annos_file.parent
    if rows and not (base / str(rows[0]["relative_im_path"])).is_file():
        ims = _find(root, "car_ims", file=False)
        base = ims.parent if ims is not None else base
    prefix = base.relative_to(root).as_posix()
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for i, row in enumerate(rows, start=1):
        where = f"{annos_file} (annotation {i})"
        rel = str(row["relative_im_path"]).strip()
        path = checked_relpath(rel if prefix == "." else f"{prefix}/{rel}", where)
        split = "test" if int(row["test"]) else "train"
        splits[split].append(Sample(path, _label(row["class"], classes, where), _box(row)))
    classes_with_images(classes, splits, str(root))
    return RawDataset(name=root.name, format="cars", root=root, classes=classes, splits=splits,
                      index_files=[annos_file])


def _label(value: object, classes: list[str], where: str) -> int:
    try:
        label = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise UserError(f"{where}: class {value!r} is not an integer.") from None
    if not 1 <= label <= len(classes):
        raise UserError(f"{where}: class {label} is out of range 1..{len(classes)} (cars_meta.mat class_names).")
    return label - 1


def _box(row: dict) -> tuple[float, float, float, float] | None:
    try:
        return xyxy_to_xywh(float(row["bbox_x1"]), float(row["bbox_y1"]), float(row["bbox_x2"]),
                            float(row["bbox_y2"]), one_based=True)
    except (KeyError, TypeError, ValueError):
        return None


def _image_dir(root: Path, name: str, first_file: str) -> Path:
    """The folder `name` (possibly nested, e.g. cars_train/cars_train) that holds the annotated files."""
    candidates = []
    queue = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        if folder.name == name:
            candidates.append(folder)
        if depth < MAX_DEPTH:
            queue.extend((c, depth + 1) for c in subdirs(folder))
    for folder in candidates:
        if (folder / first_file).is_file():
            return folder
    if candidates:
        return candidates[0]  # files may be missing; the image check will list them
    raise UserError(f"{root}: no {name}/ folder found. Extract {name}.tgz into the data set folder.")


def _find(root: Path, name: str, file: bool) -> Path | None:
    """Breadth-first search for a file or folder called `name`, at most MAX_DEPTH levels below `root`."""
    queue = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        target = folder / name
        if (target.is_file() if file else target.is_dir()):
            return target
        if depth < MAX_DEPTH:
            queue.extend((c, depth + 1) for c in subdirs(folder))
    return None
