"""`fgcli prepare-data` end to end: demo, imagefolder (generated and the shared flowers12), error lines."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.data.manifest import load_prepared

runner = CliRunner()


def _folder(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    for c in range(classes):
        for k in range(per_class):
            path = root / f"species {c}" / f"img_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((30, 40, 3), c * 70 + k, np.uint8)).save(path)
    return root


def _one_error_line(result, logs_allowed: bool = False) -> str:
    """The single red error line (log lines before it only where the command got as far as checking images)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert logs_allowed or len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return errors[0]


def test_prepare_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo_data"
    result = runner.invoke(app, ["prepare-data", "demo", str(out), "--demo-size", "32", "--demo-classes", "3",
                                 "--demo-per-class", "6", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "demo (demo): 3 classes" in result.stdout and "next: fgcli train --data" in result.stdout
    ds = load_prepared(out)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [15, 3, 6]
    assert ds.meta["demo"] == {"seed": 2, "size": 32, "classes": 3, "per_class": 6, "test_per_class": 2}
    assert (out / "train.csv").read_text().splitlines()[0] == "path,label,x,y,w,h,mask"


def test_prepare_imagefolder_default_out_beside_source(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos")
    result = runner.invoke(app, ["prepare-data", "imagefolder", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    ds = load_prepared(tmp_path / "photos_fgcli")
    assert ds.classes == ["species 0", "species 1", "species 2"] and ds.source_root == root.resolve()
    meta = yaml.safe_load((tmp_path / "photos_fgcli" / "dataset.yaml").read_text())
    assert meta["image_stats"]["width"] == {"min": 40, "median": 40, "max": 40} and meta["bad_images"] == 0


def test_prepare_flowers12_imagefolder(flowers12: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare-data", "imagefolder", str(flowers12), "--out", str(tmp_path / "f12")])
    assert result.exit_code == 0, result.output
    ds = load_prepared(tmp_path / "f12")
    assert len(ds.classes) == 12 and "daisy" in ds.classes
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [648, 72, 240]
    assert {sum(s.label == c for s in ds.split("val")) for c in range(12)} == {6}  # stratified 10 %
    assert ds.meta["image_stats"]["width"]["max"] == 224


@pytest.mark.parametrize("args, message", [
    (["cubb", "x"], "unknown data set format 'cubb'. Did you mean 'cub'?"),
    (["cub", "{tmp}/nowhere"], "does not exist"),
    (["cub", "{tmp}/photos"], "does not look like a cub data set"),
    (["aircraft", "{tmp}/photos"], "does not look like an aircraft data set"),
    (["imagefolder", "{tmp}/photos", "--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["imagefolder", "{tmp}/photos", "--level", "family"], "--level applies to the aircraft format only"),
    (["csv", "{tmp}/list.csv"], "list.csv:2: path '../secret.jpg' contains '..'"),
    (["imagefolder", "{tmp}/photos", "--strict"], "1 bad image(s) (first: species 0/broken.jpg: truncated image"),
])
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    root = _folder(tmp_path / "photos")
    jpeg = (root / "species 0" / "img_0.jpg").read_bytes()
    (root / "species 0" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "list.csv").write_text("path,label\n../secret.jpg,a\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = _one_error_line(runner.invoke(app, ["prepare-data", *args, "--workers", "1"]), "--strict" in args)
    assert message in line
    assert not (tmp_path / "photos_fgcli").exists()


def test_bad_image_is_skipped_with_a_warning(tmp_path: Path) -> None:
    root = _folder(tmp_path / "photos")
    (root / "species 1" / "empty.jpg").write_bytes(b"")
    result = runner.invoke(app, ["prepare-data", "imagefolder", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad image(s)" in result.output
    assert "species 1/empty.jpg,empty file (0 bytes)" in (tmp_path / "photos_fgcli" / "bad_images.csv").read_text()


def test_python_dash_m_prepare_demo(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "fgcli", "--quiet", "prepare-data", "demo", str(tmp_path / "d"),
                          "--demo-size", "32", "--demo-classes", "2", "--demo-per-class", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "dataset.yaml").is_file() and out.stdout == ""


# ---------------------------------------------------------------- reports, locks and wording (issue 19, point 5)
@pytest.fixture()
def fgcli_messages() -> Iterator[list[str]]:
    """The `fgcli` log messages ("LEVEL text") emitted during the test, unwrapped."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger("fgcli")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def _unreadable(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    for c in range(classes):
        for k in range(per_class):
            path = root / f"species {c}" / f"img_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("this is not a JPEG\n")
    return root


def test_all_images_unreadable_writes_the_report_it_mentions(tmp_path: Path, fgcli_messages: list[str]) -> None:
    src = _unreadable(tmp_path / "photos")
    report = tmp_path / "photos_fgcli" / "bad_images.csv"
    line = _one_error_line(runner.invoke(app, ["prepare-data", "imagefolder", str(src), "--workers", "1"]),
                           logs_allowed=True)
    assert f"3 class(es) have no training images after skipping bad images (listed in {report})" in line
    assert any(m.endswith(f"all 6 are listed in {report}") for m in fgcli_messages), fgcli_messages
    rows = report.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "path,reason" and len(rows) == 7 and rows[1].startswith("species 0/img_0.jpg,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "photos_fgcli"]  # no lock file beside them
    assert sorted(p.name for p in (tmp_path / "photos_fgcli").iterdir()) == ["bad_images.csv"]
    _folder(src)  # the user replaces the files with images: the leftover report is replaced, not refused
    result = runner.invoke(app, ["prepare-data", "imagefolder", str(src), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert load_prepared(tmp_path / "photos_fgcli").meta["bad_images"] == 0
    assert report.read_text(encoding="utf-8") == "path,reason\n"


def test_training_data_path_writes_the_report_and_leaves_no_lock(tmp_path: Path) -> None:
    from fgcli.data.locking import lock_path
    from fgcli.data.prepare import resolve_dataset
    from fgcli.errors import UserError

    src = _unreadable(tmp_path / "photos")
    with pytest.raises(UserError, match="listed in .*bad_images.csv"):
        resolve_dataset(src, workers=1)
    assert (tmp_path / "photos_fgcli" / "bad_images.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "photos_fgcli"]
    assert tmp_path not in lock_path(tmp_path / "photos_fgcli").parents


def test_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    from fgcli.data.locking import folder_lock

    folder = tmp_path / "data_fgcli"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from fgcli.data.locking import folder_lock\n"
                               f"with folder_lock(Path({str(folder)!r})):\n"
                               "    print('locked', flush=True)\n    time.sleep(300)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        got = threading.Event()

        def take() -> None:
            with folder_lock(folder):
                got.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not got.wait(0.5)  # held by the other process
        holder.kill()
        holder.wait(30)
        assert got.wait(30)  # the kernel dropped the killed holder's lock
    finally:
        holder.kill()
        holder.wait(30)
    assert list(tmp_path.iterdir()) == []  # nothing beside the data


def test_skipped_count_says_how_many_are_shown_and_listed(tmp_path: Path, fgcli_messages: list[str]) -> None:
    root = _folder(tmp_path / "photos")
    for k in range(7):
        (root / "species 1" / f"bad_{k}.jpg").write_bytes(b"")
    report = tmp_path / "photos_fgcli" / "bad_images.csv"
    result = runner.invoke(app, ["prepare-data", "imagefolder", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    warning = f"WARNING skipped 7 bad image(s); the first 5 are shown above, all 7 are listed in {report}"
    assert warning in fgcli_messages, fgcli_messages
    assert sum(m.startswith("WARNING bad image ") for m in fgcli_messages) == 5
    assert not any("more)" in m for m in fgcli_messages)
    assert "bad images skipped: 7;" in " ".join(result.stdout.split())  # the summary the command prints
    strict = runner.invoke(app, ["prepare-data", "imagefolder", str(root), "--workers", "1", "--strict"])
    assert "7 bad image(s) (first: species 1/bad_0.jpg: empty file (0 bytes)); the first 5 are listed above." in \
        _one_error_line(strict, logs_allowed=True)


def test_auto_detected_format_is_named_without_a_wrong_article(tmp_path: Path, fgcli_messages: list[str]) -> None:
    from fgcli.data.prepare import resolve_dataset

    root = _folder(tmp_path / "photos")
    resolve_dataset(root, workers=1)
    assert f"INFO data: {root} is a data set in the imagefolder format (auto-detected)" in fgcli_messages
    assert not any(" a imagefolder" in m for m in fgcli_messages)
