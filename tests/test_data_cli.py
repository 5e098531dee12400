"""`fgcli prepare-data` end to end: demo, imagefolder (generated and the shared flowers12), error lines."""

from __future__ import annotations

import subprocess
import sys
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
