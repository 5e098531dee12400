"""HERBS and MGE-CNN end to end through the CLI: train, resume, eval (fused + every head), a real
ImageFolder, and a 2-process gloo run under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import read_results_csv
from fgcli.methods.herbs.model import HEADS as HERBS_HEADS

runner = CliRunner()

MGE_HEADS = ("g1", "p1", "c1", "g2", "p2", "c2", "g3", "p3", "c3", "gate")
HEADS = {"herbs": HERBS_HEADS, "mge": MGE_HEADS}
# Small method settings: a 16-wide HERBS neck with K as fractions of each stage; MGE's part branch 2 x C wide.
METHOD_SETS = {"herbs": ["--set", "herbs.fpn_size=16", "--set", "herbs.num_selects=[0.25,0.25,0.5,0.5]"],
               "mge": ["--set", "mge.part_mult=2", "--set", "mge.gate_hidden=16"]}
TINY_DATA = ["--set", "data.demo_size=64", "--set", "data.demo_classes=3", "--set", "data.demo_per_class=6",
             "--set", "data.val_fraction=0.34"]
COMMON = ["--backbone", "test_resnet", "--img-size", "64", "--batch-size", "6", "--workers", "0", "--lr", "0.01",
          "--device", "cpu", "--set", "optim.name=adamw"]



def _args(method: str, *extra: str) -> list[str]:
    return ["train", "--method", method, "--data", "demo", *COMMON, *TINY_DATA, *METHOD_SETS[method], *extra]


@pytest.fixture(scope="module", params=["herbs", "mge"])
def trained(request, tmp_path_factory):
    method = request.param
    tmp = tmp_path_factory.mktemp(f"{method}-cli")
    result = runner.invoke(app, _args(method, "--epochs", "2", "--project", str(tmp / "runs"), "--name", "exp"))
    assert result.exit_code == 0, result.output
    return method, tmp / "runs" / "exp"


def test_train_logs_every_loss_term_and_every_head(trained) -> None:
    method, run = trained
    rows = read_results_csv(run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for head in HEADS[method]:
        assert f"val/{head}/top1" in rows[0], head
    terms = [k for k in rows[0] if k.startswith("train/") and k not in ("train/loss", "train/skipped")]
    expected = {"herbs": {"train/comb", "train/layer", "train/drop", "train/refine"},
                "mge": {f"train/ce_{k}{e}" for k in "gpc" for e in (1, 2, 3)} | {"train/ce_gate", "train/div2",
                                                                               "train/div3"}}[method]
    assert expected <= set(terms), terms
    last = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert last["method"] == method and last["epoch"] == 2


def test_resume_then_eval_reports_fused_first_and_every_head(trained, tmp_path) -> None:
    method, run = trained
    copy = tmp_path / "exp"
    shutil.copytree(run, copy)
    result = runner.invoke(app, ["train", "--resume", str(copy), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_results_csv(copy / "results.csv")] == ["1", "2", "3"]
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(copy / "weights" / "last.pt"), "--data", "demo", "--split", "val",
                                 "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["heads"]) == set(HEADS[method])
    assert metrics["num_samples"] == 6 and 0.0 <= metrics["top1"] <= 100.0
    # the fused number is printed before any head's
    fused_at = result.output.index("fused")
    assert all(result.output.index(h) > fused_at for h in HEADS[method][:2])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["herbs", "mge"])
def test_train_and_eval_on_flowers12(method, flowers12, tmp_path) -> None:
    data = tmp_path / "flowers12"
    shutil.copytree(flowers12, data)  # the manifest is written beside the data, so copy it into tmp
    result = runner.invoke(app, ["train", "--method", method, "--data", str(data), *COMMON, "--batch-size", "24",
                                 *METHOD_SETS[method], "--epochs", "1", "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    best = tmp_path / "runs" / "exp" / "weights" / "best.pt"
    assert len(torch.load(best, weights_only=True)["classes"]) == 12
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", str(best), "--data", str(data), "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 240 and set(metrics["heads"]) == set(HEADS[method])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["herbs", "mge"])
def test_two_gloo_processes_under_torchrun(method, tmp_path) -> None:
    """DDP runs the method's forward / loss on every rank (HERBS' selector and MGE's crops included), rank 0
    writes one run folder, and the run resumes under torchrun."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fgcli",
           "--quiet"]
    first = subprocess.run([*cmd, *_args(method, "--epochs", "1", "--batch-size", "3", "--project",
                                         str(tmp_path), "--name", "ddp")],
                           env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    again = subprocess.run([*cmd, "train", "--resume", str(tmp_path / "ddp"), "--epochs", "2"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = read_results_csv(tmp_path / "ddp" / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(f"val/{h}/top1" in rows[-1] for h in HEADS[method])
    last = torch.load(tmp_path / "ddp" / "weights" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["dataset"]["num_val"] == 6


def test_exported_onnx_evaluates_like_the_checkpoint(trained, tmp_path) -> None:
    """`fgcli export` then `fgcli eval model.onnx`: the same fused accuracy and per-class counts as the
    checkpoint on the whole split; `--int8` writes a quantized file and reports its accuracy and speed."""
    method, run = trained
    ckpt = tmp_path / "model.pt"
    shutil.copy(run / "weights" / "last.pt", ckpt)
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", "--int8", "--calib-images", "8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()
    assert "top-1 agreement" in result.output and "int8" in result.output
    reports = {}
    for name in ("model.pt", "model.onnx"):
        out = tmp_path / f"eval-{name}"
        result = runner.invoke(app, ["eval", str(tmp_path / name), "--data", "demo", "--split", "val", "--out",
                                     str(out), "--workers", "0"])
        assert result.exit_code == 0, result.output
        reports[name] = (json.loads((out / "metrics.json").read_text()),
                         (out / "per_class_accuracy.csv").read_text())
    (pt, pt_classes), (onnx, onnx_classes) = reports["model.pt"], reports["model.onnx"]
    assert onnx["num_samples"] == pt["num_samples"] == 6
    assert onnx["top1"] == pt["top1"] and onnx["top3"] == pt["top3"] and onnx_classes == pt_classes  # 3 classes


def test_mge_on_a_frozen_trunk_trains_the_same_model_shared_or_copied(tmp_path) -> None:
    """Frozen copies of one pretrained trunk compute what one shared trunk computes (the gate's copy sees the
    image expert 1's sees): `mge.share_backbone` then changes the weights' size and the cost, not the model.
    This is why `fgcli tune` searches `mge.share_backbone` only while the trunk trains."""
    states = {}
    for share in ("true", "false"):
        result = runner.invoke(app, [*_args("mge", "--epochs", "2", "--backbone", "test_efficientnet",
                                            "--deterministic", "--project", str(tmp_path), "--name", share),
                                     "--set", "model.freeze=backbone", "--set", f"mge.share_backbone={share}"])
        assert result.exit_code == 0, result.output
        states[share] = torch.load(tmp_path / share / "weights" / "last.pt", weights_only=True)["model"]
        rows = read_results_csv(tmp_path / share / "results.csv")
        states[share + "/rows"] = [{k: v for k, v in r.items() if "time" not in k and "img_s" not in k} for r in rows]
    assert states["true/rows"] == states["false/rows"]  # every loss term and every head's val top-1, each epoch
    shared, copied = states["true"], states["false"]
    assert len(copied) > len(shared)  # four trunks against one
    for name, value in shared.items():
        torch.testing.assert_close(copied[name], value, rtol=0, atol=0, msg=name)
