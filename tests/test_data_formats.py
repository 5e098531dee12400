"""Every format reader against a tiny generated copy of its official layout (real file names and formats)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fgcli.data.formats import detect_format
from fgcli.data.manifest import load_prepared
from fgcli.data.prepare import PrepareOptions, prepare_dataset
from fgcli.errors import UserError

OPTS = PrepareOptions(val_fraction=0.5, workers=1)


def _image(path: Path, size: tuple[int, int] = (24, 20), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _write(path: Path, lines: list[str], eol: str = "\n", trailing: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{line}{trailing}{eol}" for line in lines).encode("utf-8"))


def _prepare(fmt: str, src: Path, tmp_path: Path, **kw):
    return prepare_dataset(fmt, src, tmp_path / "out", OPTS if not kw else PrepareOptions(**{**vars(OPTS), **kw}))


# ---------------------------------------------------------------- CUB-200-2011
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(base: Path, eol: str = "\n", trailing: str = "", per_class: int = 4) -> Path:
    root = base / "CUB_200_2011"
    images, labels, split, boxes = [], [], [], []
    n = 0
    for c, name in enumerate(CUB_CLASSES, start=1):
        for k in range(per_class):
            n += 1
            rel = f"{name}/{name.split('.', 1)[1]}_{k:04d}_{100 + n}.jpg"
            _image(root / "images" / rel, value=n)
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c}")
            split.append(f"{n} {1 if k % 2 == 0 else 0}")
            boxes.append(f"{n} {1 + k}.0 2.0 15.0 {10 + k}.0")
    _write(root / "images.txt", images, eol, trailing)
    _write(root / "image_class_labels.txt", labels, eol, trailing)
    _write(root / "train_test_split.txt", split, eol, trailing)
    _write(root / "bounding_boxes.txt", boxes, eol, trailing)
    _write(root / "classes.txt", [f"{i} {c}" for i, c in enumerate(CUB_CLASSES, start=1)], eol, trailing)
    return root


def test_cub_official_layout(tmp_path: Path) -> None:
    root = make_cub(tmp_path)
    ds = _prepare("cub", root, tmp_path)
    assert ds.classes == CUB_CLASSES and ds.format == "cub" and ds.source_root == root.resolve()
    assert len(ds.split("train")) + len(ds.split("val")) == 6 and len(ds.split("test")) == 6
    first = next(s for s in ds.split("train") + ds.split("val") if s.path.endswith("_0000_101.jpg"))
    assert first.path == "images/001.Black_footed_Albatross/Black_footed_Albatross_0000_101.jpg"
    assert first.label == 0 and first.box == (1.0, 2.0, 15.0, 10.0)
    assert (root.parent / "out" / "train.csv").read_text().splitlines()[0] == "path,label,x,y,w,h"


def test_cub_nested_extraction_windows_line_endings_and_trailing_spaces(tmp_path: Path) -> None:
    inner = make_cub(tmp_path / "CUB_200_2011", eol="\r\n", trailing="  \t")
    ds = _prepare("cub", tmp_path / "CUB_200_2011", tmp_path)  # the tarball's CUB_200_2011/CUB_200_2011
    assert ds.source_root == inner.resolve() and ds.classes == CUB_CLASSES
    assert sum(len(v) for v in ds.splits.values()) == 12
    assert detect_format(tmp_path) == ("cub", inner)


@pytest.mark.parametrize("defect, message", [
    ("missing_index", "train_test_split.txt"),
    ("duplicate_id", "duplicate id '2'"),
    ("label_range", "class id 9 is not in classes.txt"),
    ("empty_class", "have no images"),
    ("bad_flag", "split flag must be 1 (train) or 0"),
    ("traversal", "contains '..'"),
    ("not_utf8", "classes.txt:2 is not valid UTF-8"),
])
def test_cub_index_errors_are_clear(tmp_path: Path, defect: str, message: str) -> None:
    root = make_cub(tmp_path)
    lines = (root / "images.txt").read_text().splitlines()
    if defect == "missing_index":
        (root / "train_test_split.txt").unlink()
    elif defect == "duplicate_id":
        _write(root / "images.txt", lines + [lines[1]])
    elif defect == "label_range":
        labels = (root / "image_class_labels.txt").read_text().splitlines()
        _write(root / "image_class_labels.txt", ["1 9"] + labels[1:])
    elif defect == "empty_class":
        _write(root / "classes.txt", [f"{i} {c}" for i, c in enumerate(CUB_CLASSES + ["004.Groove_billed_Ani"], 1)])
    elif defect == "bad_flag":
        flags = (root / "train_test_split.txt").read_text().splitlines()
        _write(root / "train_test_split.txt", ["1 2"] + flags[1:])
    elif defect == "traversal":
        _write(root / "images.txt", ["1 ../../etc/passwd"] + lines[1:])
    elif defect == "not_utf8":
        (root / "classes.txt").write_bytes(b"1 001.Black_footed_Albatross\n2 002.Laysan_Albatro\xdf\n")
    with pytest.raises(UserError) as err:
        _prepare("cub", root, tmp_path)
    assert message in str(err.value)
    assert not (tmp_path / "out" / "dataset.yaml").exists()


# ---------------------------------------------------------------- NABirds
def make_nabirds(base: Path) -> tuple[Path, list[str]]:
    root = base / "nabirds"
    classes = {0: "Birds", 1: "Perching Birds", 22: "Terns", 295: "Forster's Tern", 313: "Common Tern",
               817: "Oak Titmouse", 900: "Unused Leaf"}
    hierarchy = ["1 0", "22 0", "295 22", "313 22", "817 1", "900 1"]
    images, labels, split, boxes = [], [], [], []
    n = 0
    for cls in (817, 295, 313):  # ids out of order on purpose
        for k in range(3):
            n += 1
            image_id = str(uuid.UUID(int=n * 7919))
            rel = f"{cls:04d}/{image_id.replace('-', '')}.jpg"
            _image(root / "images" / rel, value=n)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id.replace('-', '') if n % 2 else image_id} {cls}")  # both id spellings
            split.append(f"{image_id} {1 if k < 2 else 0}")
            boxes.append(f"{image_id} 3 4 10 8")
    _write(root / "images.txt", images)
    _write(root / "image_class_labels.txt", labels)
    _write(root / "train_test_split.txt", split)
    _write(root / "bounding_boxes.txt", boxes)
    _write(root / "classes.txt", [f"{k} {v}" for k, v in classes.items()])
    _write(root / "hierarchy.txt", hierarchy)
    return root, ["Forster's Tern", "Common Tern", "Oak Titmouse"]


def test_nabirds_leaf_classes_with_images_remapped(tmp_path: Path) -> None:
    root, expected = make_nabirds(tmp_path)
    ds = _prepare("nabirds", tmp_path, tmp_path)
    assert ds.classes == expected  # ids 295, 313, 817 -> 0, 1, 2; unused leaf 900 and inner nodes dropped
    assert ds.meta["class_ids"] == [295, 313, 817] and ds.meta["parents"] == ["Terns", "Terns", "Perching Birds"]
    samples = ds.split("train") + ds.split("val")
    assert len(samples) == 6 and len(ds.split("test")) == 3
    assert {s.label for s in ds.split("test")} == {0, 1, 2}
    assert all(s.path.startswith("images/0") and s.box == (3.0, 4.0, 10.0, 8.0) for s in samples)
    titmouse = [s for s in samples if s.path.startswith("images/0817/")]
    assert titmouse and all(s.label == 2 for s in titmouse)
    assert detect_format(tmp_path) == ("nabirds", root)


# ---------------------------------------------------------------- Stanford Cars
CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _annotations(rows: list[tuple[int, int, int, int, int, str]], labelled: bool = True) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if labelled else []) + ["fname"]
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (x1, y1, x2, y2, cls, fname) in enumerate(rows):
        values = [np.array([[x1]], np.uint16), np.array([[y1]], np.uint16), np.array([[x2]], np.uint16),
                  np.array([[y2]], np.uint16)] + ([np.array([[cls]], np.uint8)] if labelled else []) + [np.array([fname])]
        arr[0, i] = tuple(values)
    return arr


def make_cars(base: Path, kaggle: bool = False, test_labels_in_devkit: bool = False) -> Path:
    root = base / "stanford_cars"
    devkit = root / ("car_devkit/devkit" if kaggle else "devkit")
    devkit.mkdir(parents=True)
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": np.array([CAR_NAMES], dtype=object)})
    for split in ("train", "test"):
        folder = root / f"cars_{split}" / (f"cars_{split}" if kaggle else "")
        rows = []
        for i in range(1, 7):
            fname = f"{i:05d}.jpg"
            _image(folder / fname, size=(40, 30), value=i + (100 if split == "test" else 0))
            rows.append((5, 6, 30, 25, (i - 1) % 3 + 1, fname))
        if split == "train":
            scipy.io.savemat(devkit / "cars_train_annos.mat", {"annotations": _annotations(rows)})
        else:
            scipy.io.savemat(devkit / "cars_test_annos.mat", {"annotations": _annotations(rows, labelled=False)})
            where = devkit if test_labels_in_devkit else root
            scipy.io.savemat(where / "cars_test_annos_withlabels.mat", {"annotations": _annotations(rows)})
    return root


@pytest.mark.parametrize("kaggle, in_devkit", [(False, False), (True, False), (False, True)])
def test_cars_official_and_common_layouts(tmp_path: Path, kaggle: bool, in_devkit: bool) -> None:
    root = make_cars(tmp_path, kaggle=kaggle, test_labels_in_devkit=in_devkit)
    ds = _prepare("cars", root, tmp_path)
    assert ds.classes == CAR_NAMES
    nest = "cars_train/cars_train" if kaggle else "cars_train"
    train = sorted(ds.split("train") + ds.split("val"), key=lambda s: s.path)
    assert [s.path for s in train][:2] == [f"{nest}/00001.jpg", f"{nest}/00002.jpg"]
    assert [s.label for s in train] == [0, 1, 2, 0, 1, 2]
    assert train[0].box == (4.0, 5.0, 26.0, 20.0)  # 1-based inclusive corners -> 0-based x, y, w, h
    assert len(ds.split("test")) == 6 and ds.split("test")[0].path.startswith("cars_test/")
    assert detect_format(root) == ("cars", root)


def test_cars_without_test_labels_says_which_file_to_get(tmp_path: Path) -> None:
    root = make_cars(tmp_path)
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(UserError, match="cars_test_annos_withlabels.mat not found .*cars_test_annos.mat has no labels"):
        _prepare("cars", root, tmp_path)


def test_cars_all_in_one_release(tmp_path: Path) -> None:
    root = tmp_path / "cars"
    rows = np.zeros((1, 6), dtype=[(f, "O") for f in ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2",
                                                          "bbox_y2", "class", "test")])
    for i in range(6):
        rel = f"car_ims/{i + 1:06d}.jpg"
        _image(root / rel, value=i)
        rows[0, i] = (np.array([rel]), np.array([[1]]), np.array([[1]]), np.array([[10]]), np.array([[10]]),
                      np.array([[i % 3 + 1]]), np.array([[int(i >= 3)]]))
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": rows, "class_names": np.array([CAR_NAMES], dtype=object)})
    ds = _prepare("cars", root, tmp_path)
    assert len(ds.split("test")) == 3 and ds.split("test")[0].path == "car_ims/000004.jpg"
    assert ds.split("test")[0].label == 0 and ds.split("test")[0].box == (0.0, 0.0, 10.0, 10.0)


def test_cars_label_out_of_range(tmp_path: Path) -> None:
    root = make_cars(tmp_path)
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat",
                     {"annotations": _annotations([(1, 1, 5, 5, 7, "00001.jpg")])})
    with pytest.raises(UserError, match="class 7 is out of range 1..3"):
        _prepare("cars", root, tmp_path)


# ---------------------------------------------------------------- FGVC-Aircraft
VARIANTS = ["707-320", "A300B4", "F/A-18", "Cessna 172"]
FAMILIES = ["Boeing 707", "A300", "F/A-18", "Cessna 172"]
MAKERS = ["Boeing", "Airbus", "McDonnell Douglas", "Cessna"]


def make_aircraft(base: Path) -> Path:
    data = base / "fgvc-aircraft-2013b" / "data"
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    boxes = []
    n = 0
    for split in rows:
        for c in range(len(VARIANTS)):
            n += 1
            image_id = f"{1025794 + n:07d}"
            _image(data / "images" / f"{image_id}.jpg", size=(48, 60), value=n)
            rows[split].append((image_id, c))
            boxes.append(f"{image_id} 3 5 40 30")
    for level, names in (("variant", VARIANTS), ("family", FAMILIES), ("manufacturer", MAKERS)):
        _write(data / f"{level if level != 'family' else 'familie'}s.txt", names)
        for split, items in rows.items():
            _write(data / f"images_{level}_{split}.txt", [f"{i} {names[c]}" for i, c in items])
    _write(data / "images_box.txt", boxes)
    return data


@pytest.mark.parametrize("level, names", [("variant", VARIANTS), ("family", FAMILIES), ("manufacturer", MAKERS)])
def test_aircraft_levels_official_val_and_banner(tmp_path: Path, level: str, names: list[str]) -> None:
    data = make_aircraft(tmp_path)
    ds = _prepare("aircraft", tmp_path / "fgvc-aircraft-2013b", tmp_path, level=level)
    assert ds.classes == names and ds.name == "fgvc-aircraft-2013b" and ds.source_root == data.resolve()
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [4, 4, 4]  # official val kept, none carved
    assert ds.meta["official_val"] and ds.crop_bottom == 20 and ds.meta["level"] == level
    assert ds.split("train")[0].box == (2.0, 4.0, 38.0, 26.0)
    assert detect_format(tmp_path) == ("aircraft", data)


def test_aircraft_unknown_class_and_level_errors(tmp_path: Path) -> None:
    data = make_aircraft(tmp_path)
    with pytest.raises(UserError, match="unknown aircraft --level 'model'"):
        _prepare("aircraft", data, tmp_path, level="model")
    _write(data / "images_variant_test.txt", ["1099999 Boeing 747-400"])
    with pytest.raises(UserError, match="variant 'Boeing 747-400' is not in variants.txt"):
        _prepare("aircraft", data, tmp_path)


def test_aircraft_dataset_crops_the_banner(tmp_path: Path) -> None:
    from fgcli.data.dataset import ManifestDataset

    make_aircraft(tmp_path)
    ds = _prepare("aircraft", tmp_path, tmp_path)
    image, _ = ManifestDataset(ds.split("train"), ds.source_root, crop_bottom=ds.crop_bottom)[0]
    assert image.size == (48, 40)


# ---------------------------------------------------------------- Stanford Dogs
BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def _cell(values: list[str]) -> np.ndarray:
    cell = np.empty((len(values), 1), dtype=object)
    for i, v in enumerate(values):
        cell[i, 0] = np.array([v])
    return cell


def make_dogs(base: Path, lists_dir: str = "", text_lists: bool = False) -> Path:
    root = base / "StanfordDogs"
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, folder in enumerate(BREEDS, start=1):
        wnid = folder.split("-")[0]
        for k in range(4):
            rel = f"{folder}/{wnid}_{1000 + k}.jpg"
            _image(root / "Images" / rel, value=label * 10 + k)
            lists["train" if k < 2 else "test"].append((rel, label))
        xml = (f"<annotation><size><width>24</width><height>20</height></size><object><name>{folder}</name>"
               "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object></annotation>")
        (root / "Annotation" / folder).mkdir(parents=True, exist_ok=True)
        (root / "Annotation" / folder / f"{wnid}_1000").write_text(xml)
    target = root / lists_dir
    target.mkdir(parents=True, exist_ok=True)
    for split, items in lists.items():
        if text_lists:
            _write(target / f"{split}_list.txt", [f"{rel} {lab}" for rel, lab in items], eol="\r\n")
        else:
            scipy.io.savemat(target / f"{split}_list.mat", {
                "file_list": _cell([r for r, _ in items]),
                "annotation_list": _cell([r[:-4] for r, _ in items]),
                "labels": np.array([[lab] for _, lab in items], dtype=np.float64)})
    return root


@pytest.mark.parametrize("lists_dir, text", [("", False), ("lists", False), ("", True)])
def test_dogs_lists_and_annotations(tmp_path: Path, lists_dir: str, text: bool) -> None:
    root = make_dogs(tmp_path, lists_dir, text)
    ds = _prepare("dogs", tmp_path, tmp_path)
    assert ds.classes == ["Chihuahua", "Japanese_spaniel", "Maltese_dog"]
    assert ds.meta["wnids"] == ["n02085620", "n02085782", "n02085936"]
    train = ds.split("train") + ds.split("val")
    assert len(train) == 6 and len(ds.split("test")) == 6
    with_box = [s for s in train if s.box is not None]
    assert len(with_box) == 3 and with_box[0].box == (2.0, 3.0, 18.0, 12.0)
    assert all(s.path.startswith("Images/n02085") and s.path.endswith("_1000.jpg") for s in with_box)
    assert detect_format(tmp_path) == ("dogs", root)


def test_dogs_label_folder_mismatch(tmp_path: Path) -> None:
    root = make_dogs(tmp_path)
    mat = scipy.io.loadmat(root / "train_list.mat")
    mat["labels"][0, 0] = 3
    scipy.io.savemat(root / "train_list.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(UserError, match="labels are not 1..3|disagrees"):
        _prepare("dogs", root, tmp_path)


# ---------------------------------------------------------------- Flowers-102
def make_flowers(base: Path) -> Path:
    root = base / "flowers-102"
    labels = [(k % 102) + 1 for k in range(204)]
    for number in range(1, 205):
        _image(root / "jpg" / f"image_{number:05d}.jpg", size=(20, 18), value=number)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(root / "setid.mat", {"trnid": np.arange(1, 103)[None], "valid": np.arange(103, 154)[None],
                                          "tstid": np.arange(154, 205)[None]})
    return root


def test_flowers102_official_splits_and_names(tmp_path: Path) -> None:
    root = make_flowers(tmp_path)
    ds = _prepare("flowers102", root, tmp_path)
    assert len(ds.classes) == 102 and ds.classes[0] == "pink primrose" and ds.classes[-1] == "blackberry lily"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [102, 51, 51] and ds.meta["official_val"]
    assert ds.split("train")[0].path == "jpg/image_00001.jpg" and ds.split("train")[0].label == 0
    assert ds.split("val")[0].path == "jpg/image_00103.jpg" and ds.split("val")[0].label == 0
    assert detect_format(tmp_path) == ("flowers102", root)


def test_flowers102_label_out_of_range(tmp_path: Path) -> None:
    root = make_flowers(tmp_path)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": np.array([[103] * 204])})
    with pytest.raises(UserError, match="label 103 is out of range 1..102"):
        _prepare("flowers102", root, tmp_path)


# ---------------------------------------------------------------- ImageFolder and CSV
def test_imagefolder_with_and_without_split_folders(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for c in ("b_cls", "a_cls"):
        for k in range(5):
            _image(flat / c / "sub" / f"{k}.JPG", value=k)
    (flat / "a_cls" / "._0.JPG").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # must be ignored
    (flat / "README.txt").write_text("not an image")
    ds = prepare_dataset("imagefolder", flat, tmp_path / "flat_out", PrepareOptions(workers=1, val_fraction=0.25,
                                                                                      test_fraction=0.2))
    assert ds.classes == ["a_cls", "b_cls"] and ds.meta["carved"] == ["test", "val"]
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    assert all(s.path.startswith(("a_cls/sub/", "b_cls/sub/")) for v in ds.splits.values() for s in v)

    split = tmp_path / "split"
    for part, n in (("train", 3), ("val", 1), ("test", 2)):
        for c in ("x", "y"):
            for k in range(n):
                _image(split / part / c / f"{k}.png", value=k)
    ds = prepare_dataset("imagefolder", split, None, PrepareOptions(workers=1))
    assert ds.root == tmp_path / "split_fgcli"  # default: <SRC>_fgcli beside SRC
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6, 2, 4] and ds.meta["official_val"]


def test_imagefolder_empty_class_and_non_utf8_name(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for k in range(3):
            _image(root / c / f"{k}.jpg", value=k)
    bad_name = bytes(root / "a") + b"/caf\xe9.jpg"  # latin-1 bytes: not valid UTF-8
    with open(bad_name, "wb") as f:
        f.write((root / "a" / "0.jpg").read_bytes())
    ds = prepare_dataset("imagefolder", root, tmp_path / "out", PrepareOptions(workers=1))
    bad = (tmp_path / "out" / "bad_images.csv").read_text(encoding="utf-8")
    assert "a/caf\\xe9.jpg" in bad and "not valid UTF-8" in bad
    assert sum(len(v) for v in ds.splits.values()) == 6
    (root / "c").mkdir()
    with pytest.raises(UserError, match="class folder .*c has no images"):
        prepare_dataset("imagefolder", root, tmp_path / "out", PrepareOptions(workers=1))


def test_csv_format_labels_splits_and_boxes(tmp_path: Path) -> None:
    for k in range(6):
        _image(tmp_path / "pics" / f"{k}.jpg", value=k)
    (tmp_path / "labels.csv").write_text(
        "path,label,split,x,y,w,h\r\n" + "".join(
            f"pics\\{k}.jpg,{k % 2 + 1},{'test' if k >= 4 else 'train'},1,2,3,4\r\n" for k in range(6)))
    ds = prepare_dataset("csv", tmp_path / "labels.csv", None, PrepareOptions(workers=1, val_fraction=0.5))
    assert ds.root == tmp_path / "labels_fgcli" and ds.classes == ["1", "2"]
    assert ds.split("test")[0].path == "pics/4.jpg" and ds.split("test")[0].label == 0
    assert ds.split("train")[0].box == (1.0, 2.0, 3.0, 4.0)
    assert load_prepared(ds.root).split("test") == ds.split("test")


@pytest.mark.parametrize("bad_path", ["../outside.jpg", "/etc/passwd", "pics/../../x.jpg", "C:\\data\\x.jpg"])
def test_csv_rejects_paths_outside_the_root(tmp_path: Path, bad_path: str) -> None:
    _image(tmp_path / "pics" / "0.jpg")
    (tmp_path / "list.csv").write_text(f"path,label\npics/0.jpg,cat\n{bad_path},dog\n")
    with pytest.raises(UserError, match=r"list.csv:3: .*(absolute path|contains '\.\.')"):
        prepare_dataset("csv", tmp_path / "list.csv", tmp_path / "out", PrepareOptions(workers=1))


def test_same_image_in_train_and_test_is_an_error(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    (tmp_path / "list.csv").write_text("path,label,split\na.jpg,x,train\nb.jpg,y,train\na.jpg,x,test\n")
    with pytest.raises(UserError, match="a.jpg is in both the train and the test split"):
        prepare_dataset("csv", tmp_path / "list.csv", tmp_path / "out", PrepareOptions(workers=1))


def test_detection_falls_back_to_imagefolder_and_reports_unknown(tmp_path: Path) -> None:
    for c in ("a", "b"):
        _image(tmp_path / "f" / c / "0.jpg")
    assert detect_format(tmp_path / "f") == ("imagefolder", tmp_path / "f")
    (tmp_path / "empty").mkdir()
    assert detect_format(tmp_path / "empty") is None
