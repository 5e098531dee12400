"""Fault tolerance in real processes: SIGKILL at any point + --resume = bit-identical weights; Ctrl-C exits 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fgcli.engine.rundir import read_results_csv

ARGS = ["--method", "baseline", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32",
        "--batch-size", "8", "--workers", "0", "--lr", "0.05", "--device", "cpu", "--deterministic", "--ema",
        "--seed", "3", "--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set",
        "data.demo_per_class=8", "--set", "data.val_fraction=0.25", "--set", "sched.warmup=1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fgcli", "--quiet", "train", *args]


def _start(project: Path, name: str, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(_cmd(*ARGS, "--epochs", str(epochs), "--project", str(project), "--name", name),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_rows(run: Path, rows: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Block until results.csv has `rows` rows (an epoch finished and is being saved)."""
    end = time.time() + timeout
    while time.time() < end:
        csv = run / "results.csv"
        if csv.is_file():
            try:
                if len(read_results_csv(csv)) >= rows:
                    return
            except (OSError, ValueError):
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for an epoch")


def _resume(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=600)


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_identical(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), f"optimizer {k} differs"
    strip = ("time", "epoch_time")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a["history"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in b["history"]]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_identical_weights(tmp_path) -> None:
    epochs = 3
    full = subprocess.run(_cmd(*ARGS, "--epochs", str(epochs), "--project", str(tmp_path), "--name", "full"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stdout + full.stderr
    run = tmp_path / "killed"
    # kill 1: the moment epoch 1's results row appears (during its checkpoint writes)
    proc = _start(tmp_path, "killed", epochs)
    _wait_rows(run, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _state(run / "weights" / "last.pt")["epoch"] in (0, 1)  # killed before the run could finish
    # kill 2: in the middle of a later epoch of the resumed process
    proc = subprocess.Popen(_cmd("--resume", str(run)), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_rows(run, 2, proc)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _state(run / "weights" / "last.pt")["epoch"] in (1, 2)
    done = _resume(run)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_identical(_state(tmp_path / "full" / "weights" / "last.pt"), _state(run / "weights" / "last.pt"))
    assert [r["epoch"] for r in read_results_csv(run / "results.csv")] == ["1", "2", "3"]
    assert not list((run / "weights").glob(".*.tmp"))  # stale temp files of killed writes are cleaned up


@pytest.mark.slow
def test_ctrl_c_exits_130_and_keeps_the_last_completed_epoch(tmp_path) -> None:
    proc = _start(tmp_path, "exp", 4)
    _wait_rows(tmp_path / "exp", 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    last = _state(tmp_path / "exp" / "weights" / "last.pt")
    rows = read_results_csv(tmp_path / "exp" / "results.csv")
    assert last["epoch"] == len(rows) >= 1
    assert "Interrupted" in out and "--resume" in out
