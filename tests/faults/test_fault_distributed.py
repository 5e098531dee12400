"""8. Distributed: a rank SIGKILLed in a 2-process gloo run under torchrun ends the job promptly (no hang)
with a message naming the dead rank; last.pt of rank 0 is whole, and the job resumes from it to the end."""

from __future__ import annotations

import signal
import sys

import pytest
from faultkit import FAULTRUN, TINY_DATA, assert_run_whole, run

from fgcli.engine.rundir import read_results_csv

ARGS = ["--method", "baseline", "--data", "demo", "--backbone", "test_convnext", "--img-size", "32", "--workers",
        "0", "--lr", "0.05", "--device", "cpu", "--epochs", "3", "--seed", "5", "--batch-size", "2", *TINY_DATA]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.slow
def test_a_dying_rank_ends_the_job_and_the_run_resumes(tmp_path, faults) -> None:
    with faults.inject("distributed", "rank 1 SIGKILLed in epoch 2 of a 2-process gloo run"):
        proc = run([*TORCHRUN, str(FAULTRUN), "--quiet", "train", *ARGS, "--project", str(tmp_path), "--name",
                    "exp"], point="rank:1:2:1", timeout=180)  # a hang would raise TimeoutExpired
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert "rank      : 1" in out and f"exitcode  : -{int(signal.SIGKILL)}" in out and "SIGKILL" in out, out
        assert assert_run_whole(tmp_path / "exp")["last.pt"]["epoch"] == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    with faults.inject("distributed", "torchrun --resume after the dead rank"):
        proc = run([*TORCHRUN, "-m", "fgcli", "--quiet", "train", "--resume", str(tmp_path / "exp")], timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [r["epoch"] for r in read_results_csv(tmp_path / "exp" / "results.csv")] == ["1", "2", "3"]
        assert assert_run_whole(tmp_path / "exp")["last.pt"]["epoch"] == 3
