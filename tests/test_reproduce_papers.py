"""benchmarks/reproduce_papers.py without a GPU: it exits 0 saying so, its commands parse against the CLI and
use the shipped paper recipes, and its table says "to be measured" until a result exists."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from fgcli.cli import app
from fgcli.config import resolve_config

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_papers.py"


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("reproduce_papers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_papers"] = module  # its dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("reproduce_papers", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would train for real")
def test_exits_0_without_cuda_and_says_so(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA device visible to PyTorch" in done.stdout and "exit 0" in done.stdout
    assert done.stdout.count("to be measured") == 4  # fgcli top-1 and difference, for both papers
    assert not (tmp_path / "w").exists()  # nothing was run or written


def test_plan_commands_parse_and_use_the_paper_recipes(repro, tmp_path: Path, capsys) -> None:
    group = typer.main.get_command(app)
    for paper, info in repro.PAPERS.items():
        commands = repro.plan(paper, tmp_path / "CUB_200_2011", tmp_path / "work")
        for args in commands.values():
            parent = group.make_context("fgcli", list(args), resilient_parsing=True)
            name, command, rest = group.resolve_command(parent, list(args))
            command.make_context(name, rest, parent=parent)  # raises on an unknown option or a bad value
        train = commands["train"]
        recipe = train[train.index("--recipe") + 1]
        cfg = resolve_config(recipe)
        assert cfg.method == paper and cfg.train.epochs == info.epochs
        assert commands["eval"][1].endswith(info.checkpoint) and "test" in commands["eval"]
    # MGE-CNN's recipe trains on the whole train split (val = test), so only last.pt is an honest number
    assert resolve_config("mge_resnet50_448_cub").data.val_split == "test" and repro.PAPERS["mge"].checkpoint == "last.pt"
    assert resolve_config("herbs_swin_large_384_cub").data.val_fraction > 0
    assert repro.main(["--plan", "--work", str(tmp_path / "none")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("fgcli train --recipe") == 2 and printed.count("fgcli eval") == 2
    assert "| HERBS | Swin-L (IN-22k) 384 px | `herbs_swin_large_384_cub` | 93.10 | to be measured |" in printed


def test_table_shows_a_measured_result_beside_the_paper(repro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    """`reproduce` trains, evaluates and stores a result (fgcli's CLI replaced by a stub here); the report then
    shows it beside the paper's number."""
    calls = []

    def fake_run(cmd: list[str], log: Path) -> None:
        calls.append(cmd)
        if "eval" in cmd:
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps({"top1": 87.5, "top5": 97.0, "heads": {"g1": {"top1": 80}}}))

    monkeypatch.setattr(repro, "run", fake_run)
    result = repro.reproduce("mge", tmp_path / "CUB_200_2011", tmp_path / "work")
    assert result["top1"] == 87.5 and result["checkpoint"] == "last.pt"
    assert [c[c.index("--quiet") + 1] for c in calls] == ["train", "eval"]
    (tmp_path / "work" / "runs" / "mge" / "weights").mkdir(parents=True)
    (tmp_path / "work" / "runs" / "mge" / "weights" / "last.pt").write_bytes(b"x")
    repro.reproduce("mge", tmp_path / "CUB_200_2011", tmp_path / "work")
    assert "--resume" in calls[2]  # an unfinished run continues from its last.pt
    assert repro.main(["--report", "--work", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    assert "| MGE-CNN | 4 x ResNet-50 448 px | `mge_resnet50_448_cub` | 88.78 | 87.50 (last.pt) | -1.28 |" in printed
    assert "| HERBS |" in printed and printed.count("to be measured") == 2
