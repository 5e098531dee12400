"""3. Untrusted files: pickled code is refused (weights_only) and never runs, whatever command reads the file;
truncated / corrupt checkpoints and .onnx files give one clear line; a checkpoint whose weights or classes
do not match is refused with what differs."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from exportkit import make_checkpoint_file, write_images
from faultkit import TRAIN_FAST
from typer.testing import CliRunner

from fgcli.cli import app

runner = CliRunner()


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("untrusted")
    ckpt = make_checkpoint_file(tmp)
    images = write_images(tmp / "images", 2, size=40)
    onnx = tmp / "model.onnx"
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", "--no-verify", "--out", str(onnx)])
    assert result.exit_code == 0, result.output
    return {"ckpt": ckpt, "onnx": onnx, "image": images[0], "tmp": tmp}


# -- pickled code ----------------------------------------------------------------------------------------
def _payloads(marker: Path) -> dict[str, object]:
    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Exec:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    class Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["touch", str(marker)],))

    return {"os.system": System(), "builtins.exec": Exec(), "subprocess.Popen": Popen()}


def _evil_checkpoint(folder: Path, kind: str, where: str, marker: Path) -> Path:
    ckpt = torch.load(make_checkpoint_file(folder, name="base.pt"), weights_only=True)
    payload = _payloads(marker)[kind]
    if where == "top":
        ckpt["extra"] = payload
    else:  # hidden among the weights
        ckpt["model"]["fc.bias_hook"] = payload
    path = folder / f"evil-{kind}-{where}.pt"
    torch.save(ckpt, path, pickle_module=pickle)
    return path


COMMANDS = {
    "eval": lambda ckpt, img: ["eval", str(ckpt), "--data", "demo"],
    "export": lambda ckpt, img: ["export", str(ckpt), "--onnx"],
    "predict": lambda ckpt, img: ["predict", str(ckpt), str(img)],
    "train --resume": lambda ckpt, img: ["train", "--resume", str(ckpt)],
    "train --pretrained-file": lambda ckpt, img: ["train", *TRAIN_FAST, "--epochs", "1", "--pretrained-file",
                                                  str(ckpt), "--project", str(ckpt.parent / "runs")],
}


@pytest.mark.parametrize("payload, where", [("os.system", "top"), ("builtins.exec", "model"),
                                            ("subprocess.Popen", "top")])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_pickled_code_is_refused_and_never_runs(tmp_path, files, faults, command, payload, where) -> None:
    marker = tmp_path / "payload-ran"
    with faults.inject("untrusted", f"{payload} payload ({where}) read by {command}"):
        evil = _evil_checkpoint(tmp_path, payload, where, marker)
        result = runner.invoke(app, COMMANDS[command](evil, files["image"]))
        assert result.exit_code == 1, result.output
        line = _one_error_line(result.output)
        assert "refused for safety" in line and "not executed" in line, line
        assert not marker.exists()


# -- damaged files ---------------------------------------------------------------------------------------
def _damage(data: bytes, kind: str, other: bytes) -> bytes:
    rng = np.random.default_rng(0)
    n = len(data)
    if kind == "empty":
        return b""
    if kind == "cut-last-byte":
        return data[:-1]
    if kind.startswith("cut-"):  # keep the first fraction
        return data[: int(n * float(kind[4:]))]
    if kind == "random-bytes":
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == "zeroed-header":
        return bytes(64) + data[64:]
    if kind.startswith("flip-"):  # one byte inverted at this fraction of the file
        out = bytearray(data)
        out[int(n * float(kind[5:]))] ^= 0xFF
        return bytes(out)
    if kind == "text":
        return b"model weights: see the shared drive\n"
    if kind == "other-format":
        return other
    raise AssertionError(kind)


CHECKPOINT_DAMAGE = ["empty", "cut-0.01", "cut-0.5", "cut-last-byte", "random-bytes", "zeroed-header",
                     "flip-0.0001", "flip-0.5", "flip-0.9", "text", "other-format"]


@pytest.mark.parametrize("kind", CHECKPOINT_DAMAGE)
def test_damaged_checkpoint_is_a_clear_error(tmp_path, files, faults, kind) -> None:
    with faults.inject("untrusted", f"checkpoint: {kind}"):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(_damage(files["ckpt"].read_bytes(), kind, files["onnx"].read_bytes()))
        for args in (["export", str(bad), "--onnx"], ["predict", str(bad), str(files["image"])]):
            result = runner.invoke(app, args)
            assert result.exit_code == 1, result.output
            line = _one_error_line(result.output)
            assert "corrupt" in line or "not an fgcli checkpoint" in line, line
            assert str(bad) in line
        assert not (tmp_path / "bad.onnx").exists()


ONNX_DAMAGE = ["empty", "cut-0.3", "cut-0.9", "random-bytes", "zeroed-header", "text", "other-format"]


@pytest.mark.parametrize("kind", ONNX_DAMAGE)
def test_damaged_onnx_is_a_clear_error(tmp_path, files, faults, kind) -> None:
    with faults.inject("untrusted", f"onnx: {kind}"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(_damage(files["onnx"].read_bytes(), kind, files["ckpt"].read_bytes()))
        for args in (["predict", str(bad), str(files["image"])], ["bench", str(bad), "--batch-sizes", "1"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 1, result.output
            line = _one_error_line(result.output)
            assert str(bad) in line and ("corrupt" in line or "truncated" in line), line


# -- files that do not match -----------------------------------------------------------------------------
def test_weights_of_another_method_are_refused_with_what_differs(tmp_path, files, faults) -> None:
    with faults.inject("untrusted", "checkpoint whose weights come from another method"):
        herbs = torch.load(make_checkpoint_file(tmp_path, method="herbs", name="herbs.pt"), weights_only=True)
        mixed = torch.load(files["ckpt"], weights_only=True)
        mixed["model"] = herbs["model"]
        torch.save(mixed, tmp_path / "mixed.pt")
        result = runner.invoke(app, ["export", str(tmp_path / "mixed.pt"), "--onnx"])
        assert result.exit_code == 1
        line = _one_error_line(result.output)
        assert "do not fit method 'baseline'" in line and "missing" in line and "unexpected" in line, line


def test_weights_for_another_class_set_are_refused_with_what_differs(tmp_path, files, faults) -> None:
    with faults.inject("untrusted", "checkpoint whose head has another number of classes"):
        five = torch.load(make_checkpoint_file(tmp_path, classes=list("abcde"), name="five.pt"), weights_only=True)
        mixed = torch.load(files["ckpt"], weights_only=True)
        mixed["model"] = five["model"]
        torch.save(mixed, tmp_path / "mixed.pt")
        result = runner.invoke(app, ["predict", str(tmp_path / "mixed.pt"), str(files["image"])])
        assert result.exit_code == 1
        line = _one_error_line(result.output)
        assert "3 classes" in line and "another shape" in line and "(5,) vs (3,)" in line, line


def test_resume_on_data_with_other_classes_or_another_method_is_refused(tmp_path, faults, demo_factory) -> None:
    first = runner.invoke(app, ["train", "--method", "baseline", *TRAIN_FAST, "--epochs", "1", "--project",
                                str(tmp_path), "--name", "exp"])
    assert first.exit_code == 0, first.output
    last = tmp_path / "exp" / "weights" / "last.pt"
    with faults.inject("untrusted", "--resume on data with another class set"):
        three = demo_factory(size=32, classes=3, per_class=4)
        result = runner.invoke(app, ["train", "--resume", str(last), "--epochs", "2", "--data", str(three.root)])
        line = _one_error_line(result.output)
        assert result.exit_code == 1 and "different classes" in line and "missing" not in line, line
        assert "2 vs 3 classes" in line and "only in the data" in line, line
    with faults.inject("untrusted", "--resume with another method"):
        result = runner.invoke(app, ["train", "--resume", str(last), "--epochs", "2", "--method", "herbs"])
        line = _one_error_line(result.output)
        assert result.exit_code == 1 and "method cannot change" in line, line
    assert torch.load(last, weights_only=True)["epoch"] == 1
