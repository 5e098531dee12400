"""A training is repeatable: the same command and seed on the same machine give the same weights and numbers,
also with data-loader worker processes (each worker's augmentation RNG is seeded from the run's seed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fgcli.engine.rundir import read_results_csv
from fgcli.methods import list_methods

TINY = ["--data", "demo", "--backbone", "test_resnet", "--img-size", "48", "--batch-size", "6", "--epochs", "2",
        "--lr", "0.01", "--device", "cpu", "--workers", "2", "--set", "data.demo_size=48",
        "--set", "data.demo_classes=3", "--set", "data.demo_per_class=6", "--set", "data.val_fraction=0.34",
        "--set", "data.color_jitter=0.3"]
METHOD = {"baseline": [], "herbs": ["--set", "herbs.fpn_size=16", "--set", "herbs.num_selects=[0.25,0.25,0.5,0.5]"],
          "mge": ["--set", "mge.part_mult=2", "--set", "mge.gate_hidden=16"], "probe": []}
TIMING = ("time", "epoch_time", "train_img_s", "fit_time")


def _train(tmp: Path, method: str, name: str, seed: int) -> Path:
    # a subprocess per run: each starts from a fresh interpreter, as a user's second run does
    cmd = [sys.executable, "-m", "fgcli", "--quiet", "train", "--method", method, *TINY, *METHOD[method],
           "--seed", str(seed), "--project", str(tmp / "runs"), "--name", name]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "runs" / name


def _numbers(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_results_csv(run / "results.csv")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("method", list_methods())
def test_same_seed_same_run(method: str, tmp_path: Path) -> None:
    first, again = _train(tmp_path, method, "a", 0), _train(tmp_path, method, "b", 0)
    assert _numbers(first) == _numbers(again)
    w1, w2 = _weights(first), _weights(again)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    if method == "baseline":  # and the seed matters
        w3 = _weights(_train(tmp_path, method, "c", 1))
        assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())
