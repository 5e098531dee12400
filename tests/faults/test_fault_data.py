"""4. Bad data: every kind of difficult file, in the source (prepare-data) or appearing after preparation
(during training), is either skipped with a warning and listed, or a clear one-line error; never a crash
mid-epoch."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from faultkit import TRAIN_FAST
from imagekit import _jpeg, bomb_png, make_bad_files
from PIL import Image
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import read_results_csv

runner = CliRunner()



def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def _imagefolder(root: Path, per_class: int = 4) -> Path:
    for c, color in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        for k in range(per_class):
            (root / c).mkdir(parents=True, exist_ok=True)
            (root / c / f"{k}.jpg").write_bytes(_jpeg(size=(40, 32), color=color))
    return root


def _bad_rows(out: Path) -> dict[str, str]:
    with open(out / "bad_images.csv", encoding="utf-8") as f:
        return {row["path"]: row["reason"] for row in csv.DictReader(f)}


def _manifest_paths(out: Path) -> set[str]:
    paths = set()
    for split in ("train", "val", "test"):
        with open(out / f"{split}.csv", encoding="utf-8") as f:
            paths |= {row["path"] for row in csv.DictReader(f)}
    return paths


BAD_FILES = make_bad_files.__doc__ and {  # file name in make_bad_files -> skipped (reason) or kept (None)
    "zero.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not an image", "tiny.png": "too small",
    "bomb.png": "decompression bomb", "cmyk.jpg": None, "gray16.png": None, "palette_alpha.png": None}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_in_the_source_is_skipped_and_listed_or_kept(tmp_path, faults, fgcli_log, name) -> None:
    reason = BAD_FILES[name]
    with faults.inject("data", f"prepare-data: {name.split('.')[0]} image in an ImageFolder"):
        made = make_bad_files(tmp_path / "all")
        assert made[name] == reason
        src = _imagefolder(tmp_path / "src")
        shutil.copy(tmp_path / "all" / name, src / "a" / name)
        out = tmp_path / "out"
        result = runner.invoke(app, ["prepare-data", "imagefolder", str(src), "--out", str(out), "--workers", "1"])
        assert result.exit_code == 0, result.output
        bad = _bad_rows(out)
        if reason is None:  # odd but valid: converted to RGB and kept
            assert bad == {} and f"a/{name}" in _manifest_paths(out)
        else:
            assert list(bad) == [f"a/{name}"] and bad[f"a/{name}"].startswith(reason)
            assert f"a/{name}" not in _manifest_paths(out)
            warnings = [m for m in fgcli_log if m.startswith("WARNING")]
            assert any(f"bad image a/{name}: {reason}" in m for m in warnings), warnings
            assert any(m.endswith(f"listed in {out / 'bad_images.csv'}") for m in warnings), warnings


def test_non_utf8_file_name_is_skipped_and_listed(tmp_path, faults) -> None:
    with faults.inject("data", "prepare-data: non-UTF-8 file name"):
        src = _imagefolder(tmp_path / "src")
        with open(bytes(src / "a") + b"/caf\xe9.jpg", "wb") as f:
            f.write(_jpeg())
        out = tmp_path / "out"
        result = runner.invoke(app, ["prepare-data", "imagefolder", str(src), "--out", str(out), "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert "not valid UTF-8" in _bad_rows(out)["a/caf\\xe9.jpg"]
        assert len(_manifest_paths(out)) == 8


def _csv_source(tmp_path: Path, extra_row: str) -> Path:
    src = _imagefolder(tmp_path / "src")
    rows = [f"{c}/{k}.jpg,{c}" for c in "ab" for k in range(4)]
    (src / "labels.csv").write_text("path,label\n" + "\n".join([*rows, extra_row]) + "\n", encoding="utf-8")
    return src / "labels.csv"


@pytest.mark.parametrize("row, expect", [
    ("a/missing.jpg,a", "skipped: file not found"),
    ("../outside.jpg,a", "error: contains '..'"),
    ("/etc/passwd,a", "error: absolute path"),
    ("a/../../x.jpg,b", "error: contains '..'"),
])
def test_bad_rows_in_a_csv_source(tmp_path, faults, row, expect) -> None:
    with faults.inject("data", f"prepare-data csv: {row.split(',')[0]}"):
        src = _csv_source(tmp_path, row)
        out = tmp_path / "out"
        result = runner.invoke(app, ["prepare-data", "csv", str(src), "--out", str(out), "--workers", "1"])
        outcome, text = expect.split(": ", 1)
        if outcome == "skipped":
            assert result.exit_code == 0, result.output
            assert _bad_rows(out) == {row.split(",")[0]: text}
        else:
            assert result.exit_code == 1
            line = _one_error_line(result.output)
            assert f"{src}:10" in line and text in line, line  # file:line of the offending row
            assert not out.exists()


def test_empty_class_folder_is_a_clear_error(tmp_path, faults) -> None:
    with faults.inject("data", "prepare-data: empty class folder"):
        src = _imagefolder(tmp_path / "src")
        (src / "c").mkdir()
        result = runner.invoke(app, ["prepare-data", "imagefolder", str(src), "--out", str(tmp_path / "out")])
        assert result.exit_code == 1
        line = _one_error_line(result.output)
        assert "class folder" in line and "has no images" in line, line
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows.__setitem__(1, ["a/0.jpg", "7"]), "label 7 is out of range for 2 classes"),
    (lambda rows: rows.__setitem__(1, ["a/0.jpg", "-1"]), "label -1 is out of range"),
    (lambda rows: rows.__setitem__(1, ["a/0.jpg", "cat"]), "is not an integer class index"),
    (lambda rows: rows.__setitem__(1, ["../../etc/passwd", "0"]), "contains '..'"),
    (lambda rows: rows.__setitem__(1, ["/etc/passwd", "0"]), "absolute path"),
])
def test_edited_manifest_is_a_clear_error_before_training(tmp_path, faults, edit, message) -> None:
    with faults.inject("data", f"prepared manifest: {message}"):
        out = tmp_path / "out"
        result = runner.invoke(app, ["prepare-data", "imagefolder", str(_imagefolder(tmp_path / "src")), "--out",
                                     str(out), "--workers", "1"])
        assert result.exit_code == 0, result.output
        with open(out / "train.csv", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        edit(rows)
        with open(out / "train.csv", "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)
        result = runner.invoke(app, ["train", *TRAIN_FAST, "--data", str(out), "--epochs", "1", "--project",
                                     str(tmp_path / "runs")])
        assert result.exit_code == 1
        line = _one_error_line(result.output)
        assert f"{out / 'train.csv'}:2" in line and message in line, line
        assert not (tmp_path / "runs").exists()


# what happens to a file between prepare-data and training (a shared disk, a sync tool, a careless colleague)
AFTER_PREPARE = {
    "deleted": lambda p: p.unlink(),
    "zero-byte": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:200]),
    "not-an-image": lambda p: p.write_text("<html>moved</html>"),
    "1x1": lambda p: Image.new("RGB", (1, 1)).save(p, "PNG"),
    "decompression-bomb": lambda p: p.write_bytes(bomb_png()),
    "cmyk": lambda p: p.write_bytes(_jpeg(mode="CMYK", color=(0, 200, 200, 0))),
}


def test_files_that_go_bad_after_prepare_never_stop_an_epoch(tmp_path, faults, fgcli_log, demo_factory) -> None:
    prepared = demo_factory(size=32, classes=2, per_class=8)
    data = tmp_path / "data"
    shutil.copytree(prepared.root, data)
    train = [s.path for s in prepared.split("train")]
    injected = {}
    for (kind, damage), rel in zip(AFTER_PREPARE.items(), train, strict=False):
        damage(data / rel)
        injected[kind] = rel
    records = [faults.inject("data", f"during training: image {kind} after prepare-data") for kind in injected]
    for record in records:
        record.__enter__()
    result = runner.invoke(app, ["train", *TRAIN_FAST, "--data", str(data), "--epochs", "2", "--project",
                                 str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_results_csv(tmp_path / "runs" / "exp" / "results.csv")] == ["1", "2"]
    warned = "\n".join(m for m in fgcli_log if m.startswith("WARNING"))
    for kind, rel in injected.items():
        if kind in ("cmyk", "1x1"):  # still decodable images: used (prepare-data's size check is the gate)
            assert rel not in warned
        else:
            assert f"could not load {data / rel}" in warned, kind
    for record in records:
        record.__exit__(None, None, None)
