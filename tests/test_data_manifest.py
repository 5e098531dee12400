"""Manifests on disk (paths, atomic replacement), stratified carving, and --data resolution with reuse."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fgcli.data.demo import DemoParams
from fgcli.data.manifest import Sample, load_prepared, safe_relpath, write_prepared
from fgcli.data.prepare import PrepareOptions, cache_dir, prepare_dataset, resolve_data, resolve_dataset
from fgcli.data.splits import carve
from fgcli.errors import UserError


def _folder(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    for c in range(classes):
        for k in range(per_class):
            path = root / f"class_{c}" / f"{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 20, 3), c * 60 + k, np.uint8)).save(path)
    return root


@pytest.mark.parametrize("raw, expected", [("a/b.jpg", "a/b.jpg"), ("./a//b.jpg", "a/b.jpg"),
                                           ("a\\b.jpg", "a/b.jpg"), (" a/b c.jpg ", "a/b c.jpg")])
def test_safe_relpath_normalises(raw: str, expected: str) -> None:
    assert safe_relpath(raw) == expected


@pytest.mark.parametrize("raw", ["../a.jpg", "a/../../b.jpg", "/abs/a.jpg", "C:/a.jpg", "~/a.jpg", "", "./"])
def test_safe_relpath_rejects_escapes(raw: str) -> None:
    with pytest.raises(ValueError):
        safe_relpath(raw)


def test_carve_is_stratified_seeded_and_order_independent() -> None:
    samples = [Sample(f"c{c}/{k}.jpg", c) for c in range(4) for k in range(10 + c)]
    kept, held = carve(samples, 0.2, seed=3)
    assert len(kept) + len(held) == len(samples) and not {s.path for s in kept} & {s.path for s in held}
    counts = {c: sum(s.label == c for s in held) for c in range(4)}
    assert counts == {0: 2, 1: 2, 2: 2, 3: 3}  # round(n * 0.2) of each class: 10, 11, 12, 13 images
    assert carve(list(reversed(samples)), 0.2, seed=3)[1] == list(reversed(held))  # same picks, input order kept
    assert carve(samples, 0.2, seed=4)[1] != held
    tiny = [Sample("x.jpg", 0), Sample("y.jpg", 1)]
    assert carve(tiny, 0.5, seed=0) == (tiny, [])  # every class keeps a training image


def test_load_prepared_rejects_traversal_and_bad_labels(tmp_path: Path) -> None:
    meta = {"name": "x", "format": "csv", "source_root": str(tmp_path), "classes": ["a", "b"]}
    write_prepared(tmp_path / "p", meta, {"train": [Sample("a.jpg", 0)], "test": [Sample("b.jpg", 1)]}, [])
    assert len(load_prepared(tmp_path / "p").split("train")) == 1
    for row, message in (("../../etc/passwd,0", "contains '..'"), ("/etc/passwd,0", "absolute path"),
                         ("a.jpg,2", "label 2 is out of range for 2 classes"), ("a.jpg,x", "not an integer")):
        (tmp_path / "p" / "train.csv").write_text(f"path,label\n{row}\n")
        with pytest.raises(UserError, match=message):
            load_prepared(tmp_path / "p")


def test_split_errors_and_missing_source(tmp_path: Path) -> None:
    meta = {"name": "x", "format": "csv", "source_root": str(tmp_path / "gone"), "classes": ["a"]}
    write_prepared(tmp_path / "p", meta, {"train": [Sample("a.jpg", 0)]}, [])
    with pytest.raises(UserError, match="no longer exists"):
        load_prepared(tmp_path / "p")
    (tmp_path / "gone").mkdir()
    ds = load_prepared(tmp_path / "p")
    with pytest.raises(UserError, match="split 'val' is missing or empty .* train \\(1\\)"):
        ds.split("val")
    with pytest.raises(UserError, match="not a prepared data set"):
        load_prepared(tmp_path)


def test_failed_write_keeps_the_previous_prepared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "imgs")
    out = tmp_path / "out"
    prepare_dataset("imagefolder", root, out, PrepareOptions(workers=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import fgcli.data.manifest as manifest

    real_open = manifest.atomic_open

    @contextlib.contextmanager
    def disk_full_on_test_csv(path, *args, **kwargs):
        with real_open(path, *args, **kwargs) as handle:
            if Path(path).name == "test.csv":
                raise OSError(28, "No space left on device")
            yield handle

    monkeypatch.setattr(manifest, "atomic_open", disk_full_on_test_csv)
    with pytest.raises(UserError, match="could not write .*test.csv: No space left on device"):
        prepare_dataset("imagefolder", root, out, PrepareOptions(workers=1, seed=5))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files left, nothing replaced


def test_rewrite_replaces_every_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    out = tmp_path / "out"
    first = prepare_dataset("imagefolder", root, out, PrepareOptions(workers=1, seed=0))
    second = prepare_dataset("imagefolder", root, out, PrepareOptions(workers=1, seed=1))
    assert first.split("val") != second.split("val")
    assert load_prepared(out).split("val") == second.split("val") and load_prepared(out).meta["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["bad_images.csv", "dataset.yaml", "test.csv", "train.csv",
                                                    "val.csv"]


def test_out_may_not_be_the_source(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    with pytest.raises(UserError, match="is the data set folder itself"):
        prepare_dataset("imagefolder", root, root, PrepareOptions(workers=1))
    with pytest.raises(UserError, match="inside the image folder"):
        prepare_dataset("imagefolder", root, root / "prepared", PrepareOptions(workers=1))


def test_resolve_detects_prepares_once_and_reuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path / "imgs")
    first = resolve_dataset(str(root), val_fraction=0.2, seed=0)
    assert first.format == "imagefolder" and first.root == tmp_path / "imgs_fgcli"
    stamp = (first.root / "dataset.yaml").stat().st_mtime_ns
    again = resolve_dataset(str(root), val_fraction=0.2, seed=0)
    assert (again.root / "dataset.yaml").stat().st_mtime_ns == stamp and again.splits == first.splits
    assert resolve_dataset(str(first.root)).splits == first.splits  # a prepared folder is used as is
    other = resolve_dataset(str(root), val_fraction=0.5, seed=0)  # new options -> prepared again
    assert len(other.split("val")) > len(first.split("val"))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "class_0" / "new.png")  # source changed
    assert sum(len(v) for v in resolve_dataset(str(root), val_fraction=0.5).splits.values()) == 31


def test_resolve_falls_back_to_the_cache_for_read_only_sources(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "ro" / "imgs")
    import fgcli.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_writable", lambda folder: False)
    ds = resolve_dataset(str(root))
    assert ds.root.parent == cache_dir() / "datasets" and ds.root.name.startswith("imgs-")
    assert ds.source_root == root.resolve()


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        resolve_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="could not tell what kind of data set"):
        resolve_dataset(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="unknown data format 'cubb'. Did you mean 'cub'"):
        resolve_dataset(str(tmp_path / "empty"), fmt="cubb")


def test_resolve_demo_is_cached_by_parameters(tmp_path: Path) -> None:
    params = DemoParams(size=32, classes=3, per_class=3)
    first = resolve_dataset("demo", demo=params)
    assert first.root.parent == cache_dir() / "demo" and first.classes == ["disk-dot", "square-stripes",
                                                                           "triangle-half"]
    stamp = (first.root / "dataset.yaml").stat().st_mtime_ns
    assert (resolve_dataset("demo", demo=params).root / "dataset.yaml").stat().st_mtime_ns == stamp
    assert resolve_dataset("demo", demo=DemoParams(size=32, classes=4, per_class=3)).root != first.root

    class DataCfg:  # the config's data section
        path, format, val_fraction, seed, level = "demo", "auto", 0.1, 0, None
        demo_size, demo_classes, demo_per_class = 32, 3, 3

    assert resolve_data(DataCfg()).root == first.root
    meta = yaml.safe_load((first.root / "dataset.yaml").read_text())
    assert meta["source_root"] == "." and meta["demo"]["size"] == 32


def test_never_overwrites_files_it_did_not_write(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.csv").write_text("my own list\n")
    with pytest.raises(UserError, match="already holds train.csv that prepare-data did not write"):
        prepare_dataset("imagefolder", root, mine, PrepareOptions(workers=1))
    (mine / "images").mkdir()
    with pytest.raises(UserError, match="already holds images, train.csv"):
        prepare_dataset("demo", None, mine, PrepareOptions(workers=1), DemoParams(size=32, classes=2, per_class=2))
    assert (mine / "train.csv").read_text() == "my own list\n" and (mine / "images").is_dir()
