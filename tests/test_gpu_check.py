"""benchmarks/gpu_check.py without a GPU: it exits 0 saying so, every command it would run parses against the
CLI, and it reads the trainer's list of accelerator paths."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from fgcli.cli import app

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run for real")
def test_exits_0_without_cuda_and_says_so() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "environment: torch" in done.stdout
    assert "no CUDA device visible to PyTorch: nothing to check here (exit 0)" in done.stdout


def test_every_planned_command_parses(gpu_check, tmp_path, capsys) -> None:
    """A renamed or mistyped flag would only show on the GPU machine: parse each command line (without running
    it) with the CLI's own parser."""
    group = typer.main.get_command(app)
    seen = set()
    for method in gpu_check.METHODS:
        p = gpu_check.plan(method, tmp_path / method, epochs=1, gpus=2, has_trt=True)
        commands = [*p.train.values(), p.resume, p.ddp, p.export, p.predict_pt, *p.predict_onnx.values(), p.bench]
        for args in commands:
            parent = group.make_context("fgcli", list(args), resilient_parsing=True)
            name, command, rest = group.resolve_command(parent, list(args))
            command.make_context(name, rest, parent=parent)  # raises on an unknown option or a bad value
            seen.add(name)
    assert seen == {"train", "export", "predict", "bench"}
    assert gpu_check.main(["--plan", "--quick", "--methods", "mge"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 + 1 + 1 + 1 + 1 + 2 + 1 and all(line.startswith("fgcli ") for line in printed)
    assert any("--compile" in line for line in printed) and any("train.amp_dtype=fp16" in line for line in printed)


def test_reads_the_accelerator_paths_from_the_run_log(gpu_check, tmp_path) -> None:
    (tmp_path / "log.txt").write_text(
        "2025 INFO training herbs on tf_efficientnet_lite0 | data demo (10 classes) | img 128 | device cuda:0 | "
        "amp torch.float16 + GradScaler | channels_last | cudnn.benchmark | run runs/x\n")
    assert gpu_check.missing_paths(tmp_path, gpu_check.TRAININGS["amp-fp16"][1]) == []
    assert gpu_check.missing_paths(tmp_path, gpu_check.TRAININGS["compile"][1]) == ["amp torch.bfloat16",
                                                                                     "compile"]
    with (tmp_path / "log.txt").open("a") as f:
        f.write("WARNING --compile: torch.compile could not compile herbs on x (...); continuing in eager mode\n")
    assert "compile (fell back to eager)" in gpu_check.missing_paths(tmp_path, [])
    text = gpu_check.table([gpu_check.Step("mge: resume", True, 1.5), gpu_check.Step("mge: bench", False, 2.0, "x")])
    assert "| mge: resume | yes |     1.5 |  |" in text and "| NO  |" in text
