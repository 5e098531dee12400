"""`fgcli distill` end to end on a tiny demo: a test_resnet teacher at 48 px distilled into a test_efficientnet
baseline at 32 px; the .onnx teacher gives the same loss as the .pt; the student is an ordinary checkpoint (eval,
calibrate, export, predict, viz); resume; the Python API; bad input in one line each."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import fgcli
from fgcli.cli import app
from fgcli.distilling import teacher as teacher_module
from fgcli.engine.rundir import read_results_csv

runner = CliRunner()

TINY_DATA = ["--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8",
             "--set", "data.val_fraction=0.25"]
COMMON = ["--data", "demo", "--batch-size", "8", "--workers", "0", "--lr", "0.05", "--device", "cpu", *TINY_DATA]
STUDENT = ["--student", "test_efficientnet", "--img-size", "32", "--deterministic", *COMMON]


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def teacher(work) -> Path:
    """A 1-epoch test_resnet baseline at 48 px (calibrated at its end), and its .onnx."""
    _ok(runner.invoke(app, ["train", "--method", "baseline", "--backbone", "test_resnet", "--img-size", "48",
                            *COMMON, "--epochs", "1", "--project", str(work / "train"), "--name", "teacher"]))
    best = work / "train" / "teacher" / "weights" / "best.pt"
    _ok(runner.invoke(app, ["export", str(best), "--onnx"]))
    return best


@pytest.fixture(scope="module")
def student(work, teacher):
    """`fgcli distill` of the .pt teacher (1 epoch, deterministic), the teacher's inputs recorded."""
    seen: list[tuple[tuple[int, ...], bool, bool]] = []
    original = teacher_module.TorchTeacher.fused_logits

    def spy(self, images):
        seen.append((tuple(images.shape), self.model.training, torch.is_grad_enabled()))
        return original(self, images)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(teacher_module.TorchTeacher, "fused_logits", spy)
        result = runner.invoke(app, ["distill", str(teacher), *STUDENT, "--epochs", "1",
                                     "--project", str(work / "distill"), "--name", "pt"])
    _ok(result)
    return work / "distill" / "pt", result.output, seen


def test_the_student_is_a_baseline_run_that_names_its_teacher(student, teacher) -> None:
    run, output, seen = student
    for name in ("args.yaml", "results.csv", "confusion_matrix.png", "log.txt", "weights/best.pt", "weights/last.pt"):
        assert (run / name).is_file(), name
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["method"] == "baseline" and args["model"]["backbone"] == "test_efficientnet"
    assert args["distill"] == {"teacher": str(teacher.resolve()), "alpha": 0.5, "temperature": 2.0}
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=True)
    teacher_ckpt = torch.load(teacher, weights_only=True)
    record = ckpt["distill"]
    assert record["teacher"] == str(teacher.resolve()) and record["format"] == "checkpoint"
    assert record["method"] == "baseline" and record["backbone"] == "test_resnet" and record["img_size"] == 48
    assert record["val_top1"] == pytest.approx(teacher_ckpt["best_metric"])
    assert record["calibration_temperature"] == pytest.approx(teacher_ckpt["calibration"]["temperature"])
    assert record["alpha"] == 0.5 and record["temperature"] == 2.0 and len(record["sha256"]) == 64
    row = read_results_csv(run / "results.csv")[0]
    assert float(row["train/loss"]) == pytest.approx(0.5 * float(row["train/ce"]) + 0.5 * float(row["train/kd"]),
                                                     rel=1e-4)
    # the frozen teacher saw every training batch at its own 48 px, in eval mode, without autograd
    assert seen and all(shape[1:] == (3, 48, 48) and not training and not grad for shape, training, grad in seen)
    said = " ".join(output.split())
    assert "teacher: baseline on test_resnet at 48 px" in said and "fgcli distill: baseline on test_efficientnet" in said


def test_an_onnx_teacher_gives_the_same_loss_as_its_checkpoint(work, teacher, student) -> None:
    from fgcli.data.loaders import build_loader
    from fgcli.data.prepare import resolve_data
    from fgcli.data.transforms import build_transform
    from fgcli.distilling.task import DistillLoss
    from fgcli.engine.checkpoint import config_from_checkpoint, load_model
    from fgcli.modelinfo import Preprocess

    onnx_file = teacher.with_suffix(".onnx")
    run, _, _ = student
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    cfg, pre = config_from_checkpoint(ckpt), Preprocess.from_dict(ckpt["preprocess"])
    dataset = resolve_data(cfg.data)  # the demo the run trained on, one augmented training batch of it
    loader = build_loader(dataset.split("train"), dataset.source_root, build_transform(pre, cfg.data, True), 8,
                          train=False, workers=0)
    images, targets = next(iter(loader))[:2]
    model = load_model(run / "weights" / "last.pt", device="cpu").model
    totals = {}
    for path in (teacher, onnx_file):
        loss = DistillLoss(teacher_module.load_teacher(path), 0.5, 2.0)
        loss.bind(device=torch.device("cpu"), classes=list(ckpt["classes"]), preprocess=pre)
        with torch.no_grad():
            totals[path.suffix] = loss(model, images, model(images), targets, 0)
    assert torch.allclose(totals[".pt"][0], totals[".onnx"][0], atol=1e-5)
    assert torch.allclose(totals[".pt"][1]["kd"], totals[".onnx"][1]["kd"], atol=1e-5)
    # through the CLI: the same deterministic run with the .onnx teacher logs the same first-epoch losses
    _ok(runner.invoke(app, ["distill", str(onnx_file), *STUDENT, "--epochs", "1", "--project", str(work / "distill"),
                            "--name", "onnx"]))
    by_pt = read_results_csv(run / "results.csv")[0]
    by_onnx = read_results_csv(work / "distill" / "onnx" / "results.csv")[0]
    for column in ("train/loss", "train/ce", "train/kd"):
        assert float(by_onnx[column]) == pytest.approx(float(by_pt[column]), abs=1e-4), column
    record = torch.load(work / "distill" / "onnx" / "weights" / "best.pt", weights_only=True)["distill"]
    assert record["format"] == "onnx" and record["teacher"] == str(onnx_file.resolve())
    assert record["val_top1"] == pytest.approx(torch.load(teacher, weights_only=True)["best_metric"])


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed (fgcli[openvino])")
def test_an_openvino_ir_teacher_matches_the_onnx_one(work, teacher) -> None:
    """The teacher is any format the registry knows: the IR converted from the same checkpoint gives the .onnx
    teacher's calibrated logits within the fp32 tolerance, and names its format."""
    ir = work / "ir" / "teacher.pt"
    ir.parent.mkdir(exist_ok=True)
    shutil.copy(teacher, ir)
    _ok(runner.invoke(app, ["export", str(ir), "--format", "openvino", "--no-verify"]))
    by_onnx = teacher_module.load_teacher(teacher.with_suffix(".onnx"))
    by_ir = teacher_module.load_teacher(ir.with_suffix(".xml"))
    assert (by_ir.kind, by_ir.temperature, by_ir.classes) == ("openvino", by_onnx.temperature, by_onnx.classes)
    images = torch.randn(3, 3, 48, 48)
    np.testing.assert_allclose(by_ir.fused_logits(images).numpy(), by_onnx.fused_logits(images).numpy(), atol=1e-4)


def test_the_student_evaluates_calibrates_exports_predicts_and_visualises(student, tmp_path) -> None:
    run, _, _ = student
    best = tmp_path / "best.pt"
    shutil.copy(run / "weights" / "best.pt", best)
    _ok(runner.invoke(app, ["eval", str(best), "--workers", "0", "--out", str(tmp_path / "eval")]))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["method"] == "baseline" and metrics["num_classes"] == 4
    _ok(runner.invoke(app, ["calibrate", str(best), "--workers", "0"]))
    _ok(runner.invoke(app, ["export", str(best), "--onnx"]))
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "best.onnx")).metadata_props}
    assert json.loads(meta["distill"]) == torch.load(best, weights_only=True)["distill"]
    assert float(meta["val_top1"]) == pytest.approx(torch.load(best, weights_only=True)["best_metric"])
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
    for model in (best, tmp_path / "best.onnx"):
        predicted = runner.invoke(app, ["predict", str(model), str(images), "--workers", "1"])
        _ok(predicted)
        assert "2 images" in predicted.output
    _ok(runner.invoke(app, ["viz", str(best), str(images / "0.png"), "--out", str(tmp_path / "viz")]))
    assert (tmp_path / "viz" / "index.html").is_file()


def test_resume_continues_with_the_runs_own_teacher(student, teacher, tmp_path) -> None:
    run, _, _ = student
    copy = tmp_path / "exp"
    shutil.copytree(run, copy)
    _ok(runner.invoke(app, ["distill", "--resume", str(copy), "--epochs", "2"]))
    assert [r["epoch"] for r in read_results_csv(copy / "results.csv")] == ["1", "2"]
    assert torch.load(copy / "weights" / "last.pt", weights_only=True)["distill"]["teacher"] == str(teacher.resolve())
    other = runner.invoke(app, ["distill", str(teacher.with_suffix(".onnx")), "--resume", str(copy), "--epochs", "3"])
    assert other.exit_code == 1 and "--resume continues with the run's own teacher" in other.output
    plain = runner.invoke(app, ["train", "--resume", str(copy), "--epochs", "3"])
    assert plain.exit_code == 1 and "run it with `fgcli distill`" in " ".join(plain.output.split())
    again = runner.invoke(app, ["train", "--config", str(copy / "args.yaml"), "--project", str(tmp_path / "r")])
    assert again.exit_code == 1 and "this config distils teacher" in " ".join(again.output.split())
    # `fgcli distill --config args.yaml` reproduces the run, its teacher included
    _ok(runner.invoke(app, ["distill", "--config", str(copy / "args.yaml"), "--project", str(tmp_path / "r"),
                            "--name", "again"]))
    assert torch.load(tmp_path / "r" / "again" / "weights" / "last.pt", weights_only=True)["distill"]["teacher"] == \
        str(teacher.resolve())


def test_the_python_api(teacher, tmp_path) -> None:
    result = fgcli.distill(teacher, data="demo", student="test_efficientnet", img_size=32, epochs=1, batch_size=8,
                           workers=0, device="cpu", project=str(tmp_path), name="api",
                           set={"data.demo_size": 32, "data.demo_classes": 4, "data.demo_per_class": 8,
                                "data.val_fraction": 0.25, "distill.alpha": 0.7, "distill.temperature": 4})
    assert result.best.is_file() and result.run_dir == tmp_path / "api"
    assert result.teacher["backbone"] == "test_resnet" and result.teacher["alpha"] == 0.7
    best = torch.load(result.best, weights_only=True)
    assert best["distill"]["temperature"] == 4.0
    assert best["speed"]["measured"]  # not --deterministic: the speed probe timed steps with the teacher's forward
    with pytest.raises(fgcli.errors.UserError, match="student="):
        fgcli.distill(teacher, data="demo", backbone="test_efficientnet")


@pytest.mark.parametrize(("args", "message"), [
    (["missing.pt", *STUDENT], "teacher missing.pt does not exist. Give the teacher's checkpoint"),
    ([*STUDENT], "fgcli distill needs the teacher: give TEACHER"),
    (["TEACHER", *STUDENT, "--set", "data.demo_classes=3"], "has other classes than the data (4 vs 3 classes"),
    (["TEACHER", *STUDENT, "--set", "method=herbs"], "fgcli distill trains a baseline student, but the config's "
                                                     "method is 'herbs'"),
    (["TEACHER", *STUDENT, "--set", "distill.alpha=2"], "distill.alpha must be in [0, 1]"),
])
def test_bad_input_is_one_line(teacher, tmp_path, args, message) -> None:
    args = [str(teacher) if a == "TEACHER" else a for a in args]
    result = runner.invoke(app, ["distill", *args, "--project", str(tmp_path)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in " ".join(result.output.split())
    assert not any(tmp_path.iterdir())  # nothing was written


def test_resume_of_a_run_that_was_not_distilled(teacher) -> None:
    result = runner.invoke(app, ["distill", "--resume", str(teacher.parent.parent), "--epochs", "2"])
    assert result.exit_code == 1 and "this run was not distilled" in " ".join(result.output.split())
