"""7. Ctrl-C during training, export and prepare-data: exit 130 and no partial output files (training keeps
last.pt of the last completed epoch; export and prepare-data leave nothing new and keep older outputs)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
from exportkit import make_checkpoint_file
from faultkit import TRAIN, assert_run_whole, fgcli_cmd, run, sigint_latency
from imagekit import _jpeg
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import read_results_csv

runner = CliRunner()


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# -- training ---------------------------------------------------------------------------------------------
def test_ctrl_c_during_training_exits_130_and_keeps_the_last_completed_epoch(tmp_path, faults) -> None:
    with faults.inject("interrupt", "SIGINT during training, in epoch 2's second optimizer step (real signal)"):
        proc = run(fgcli_cmd("train", *TRAIN, "--epochs", "3", "--project", str(tmp_path), "--name", "exp",
                             fault=True), "sigint:step:2:2")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 130, out
        # a hang guard, not a speed target: the step in flight, then out without the interpreter's teardown
        assert sigint_latency(proc, time.time()) < 15, "Ctrl-C took long to stop the training"
        ckpts = assert_run_whole(tmp_path / "exp")
        assert ckpts["last.pt"]["epoch"] == len(read_results_csv(tmp_path / "exp" / "results.csv")) == 1
        assert "Interrupted" in out and "--resume" in out
        assert not list((tmp_path / "exp").rglob(".*.tmp"))


# -- export ----------------------------------------------------------------------------------------------
EXPORT_STAGES = {
    "tracing the graph": "fgcli.formats.onnx.writers.export_loaded",
    "writing the fp32 file": "fgcli.formats.onnx.writers.save_model",
    "verifying against torch": "fgcli.tasks.export_model._verify",
    "converting to fp16": "fgcli.formats.onnx.fp16.convert_fp16",
}


@pytest.mark.parametrize("stage", list(EXPORT_STAGES))
@pytest.mark.parametrize("previous", [False, True], ids=["new", "over-older-export"])
def test_ctrl_c_during_export_leaves_no_new_file(tmp_path, monkeypatch, faults, stage, previous) -> None:
    ckpt = make_checkpoint_file(tmp_path)
    out = tmp_path / "model.onnx"
    if previous:  # an older export of the same name must survive untouched
        first = runner.invoke(app, ["export", str(ckpt), "--onnx", "--no-verify", "--out", str(out)])
        assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    module, _, name = EXPORT_STAGES[stage].rpartition(".")
    real = getattr(importlib.import_module(module), name)

    def interrupted(*args, **kwargs):
        if name == "save_model":  # the bytes reach the file, then Ctrl-C
            real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(EXPORT_STAGES[stage], interrupted)
    with faults.inject("interrupt", f"Ctrl-C during export: {stage}{' (over an older export)' if previous else ''}"):
        result = runner.invoke(app, ["export", str(ckpt), "--onnx", "--fp16", "--verify", "--out", str(out)])
        assert result.exit_code == 130, result.output
        # nothing new, nothing half-written, no temp files, older files byte-identical
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_real_sigint_during_export(tmp_path, faults) -> None:
    ckpt = make_checkpoint_file(tmp_path)
    # forward 1 is the dry run, forward 2 runs inside torch.onnx.export's graph capture
    point = "sigint:call:fgcli.formats.onnx.torch_to_onnx:FusedModel.forward:2"
    with faults.inject("interrupt", "SIGINT during export, inside the exporter's trace (real signal)"):
        proc = run(fgcli_cmd("export", str(ckpt), "--onnx", "--fp16", "--out", str(tmp_path / "m.onnx"),
                             fault=True), point)
        assert proc.returncode == 130, proc.stdout + proc.stderr
        assert sigint_latency(proc, time.time()) < 15, "Ctrl-C took long to stop the export"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"], proc.stdout + proc.stderr


# -- prepare-data ----------------------------------------------------------------------------------------
def test_ctrl_c_during_prepare_data_demo_leaves_nothing(tmp_path, monkeypatch, faults) -> None:
    import fgcli.data.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "demo"
    args = ["prepare-data", "demo", "--out", str(out), "--demo-size", "32", "--demo-classes", "2", "--demo-per-class",
            "4"]
    with faults.inject("interrupt", "Ctrl-C during prepare-data demo (image checks), new folder"):
        monkeypatch.setattr(pipeline, "check_images", interrupted)
        result = runner.invoke(app, args)
        assert result.exit_code == 130, result.output
        assert not out.exists() and list(tmp_path.iterdir()) == []
    with faults.inject("interrupt", "Ctrl-C during prepare-data demo over an older prepared demo"):
        monkeypatch.undo()
        assert runner.invoke(app, args).exit_code == 0
        before = {f: (out / f).read_bytes() for f in _files(out) if (out / f).is_file()}
        monkeypatch.setattr(pipeline, "check_images", interrupted)
        result = runner.invoke(app, [*args[:-1], "6"])
        assert result.exit_code == 130, result.output
        assert {f: (out / f).read_bytes() for f in _files(out) if (out / f).is_file()} == before
        assert [p.name for p in tmp_path.iterdir()] == ["demo"]
        monkeypatch.undo()
        assert runner.invoke(app, [*args[:-1], "6"]).exit_code == 0  # and it can be run again


def test_real_sigint_during_prepare_data_image_checks(tmp_path, faults) -> None:
    src = tmp_path / "src"
    jpegs = [_jpeg(size=(1200, 800), color=(k * 30, 20, 20)) for k in range(8)]
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for k in range(400):  # 799 checks still queued when the signal arrives (all 800 take seconds)
            (src / c / f"{k}.jpg").write_bytes(jpegs[k % len(jpegs)])
    out = tmp_path / "out"
    with faults.inject("interrupt", "SIGINT during prepare-data image checks in a worker pool (real signal)"):
        # the main process has the first result and waits for the next one
        proc = run(fgcli_cmd("prepare-data", "imagefolder", str(src), "--out", str(out), "--workers", "2",
                             fault=True), "sigint:pool:1")
        out_text = proc.stdout + proc.stderr
        assert proc.returncode == 130, out_text
        assert sigint_latency(proc, time.time()) < 20, "Ctrl-C waited for the queued image checks"
        assert not out.exists(), _files(out)
        assert "Traceback" not in out_text, out_text
