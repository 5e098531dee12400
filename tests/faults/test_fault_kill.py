"""1. Kill at any point: SIGKILL during a step, during validation and at every stage of a checkpoint /
results.csv write, resumed each time, ends with the same weights, EMA, optimizer and results.csv as an
uninterrupted run; after every kill, last.pt and best.pt load."""

from __future__ import annotations

import random
import shutil
import signal

import pytest
from faultkit import TRAIN, assert_identical, assert_run_whole, fgcli_cmd, run, state, strip_times

from fgcli.engine.rundir import read_results_csv

EPOCHS = 3
#: (fault point, completed epochs in last.pt afterwards). Each resumed process dies at the next point; the
#: points cover every place of an epoch: optimizer step, validation, results.csv, best.pt and last.pt writes
#: (half-written temp file, complete temp file before the rename, right after the rename).
CHAIN = [
    ("step:1:2", 0),  # fresh run, epoch 1, second update
    ("after:results.csv:1", 0),  # epoch 1's row is on disk, its checkpoints are not
    ("write:best.pt:1", 0),  # half of the first best.pt written
    ("rename:last.pt:2", 0),  # epoch 1's last.pt complete in its temp file, not renamed (write 1 = epoch 0)
    ("val:2", 1),  # epoch 1 saved, then killed while validating epoch 2
    ("write:results.csv:1", 1),  # half of epoch 2's results.csv
    ("write:last.pt:1", 1),  # half of epoch 2's last.pt
    ("after:last.pt:1", 2),  # epoch 2's last.pt renamed into place, killed right after
    ("step:3:3", 2),  # the last update of the run
]


@pytest.mark.slow
def test_sigkill_at_every_point_then_resume_is_bit_identical(tmp_path, faults) -> None:
    full = run(fgcli_cmd("train", *TRAIN, "--epochs", str(EPOCHS), "--project", str(tmp_path), "--name", "full"))
    assert full.returncode == 0, full.stdout + full.stderr
    reference = state(tmp_path / "full" / "weights" / "last.pt")
    run_dir = tmp_path / "killed"
    fresh = fgcli_cmd("train", *TRAIN, "--epochs", str(EPOCHS), "--project", str(tmp_path), "--name", "killed",
                      fault=True)
    for i, (point, epoch_after) in enumerate(CHAIN):
        with faults.inject("kill", f"SIGKILL at {point}"):
            cmd = fresh if i == 0 else fgcli_cmd("train", "--resume", str(run_dir), fault=True)
            proc = run(cmd, point)
            assert proc.returncode == -signal.SIGKILL, f"{point}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
            loaded = assert_run_whole(run_dir)
            assert loaded["last.pt"]["epoch"] == epoch_after, point
    # two more kills at random (seeded) moments of a resumed process: at its N-th call in fgcli's own code, N drawn
    # between the end of its setup (args.yaml written) and its epoch's last.pt write, as counted on a copy
    before = state(run_dir / "weights" / "last.pt")["epoch"]
    assert before < EPOCHS
    probe = tmp_path / "probe"
    shutil.copytree(run_dir, probe)
    marks = tmp_path / "calls.txt"
    counted = run(fgcli_cmd("train", "--resume", str(probe), fault=True), f"count:{marks}")
    assert counted.returncode == 0, counted.stdout + counted.stderr
    writes = [line.split() for line in marks.read_text().splitlines()]
    first = next(int(n) for name, n in writes if name == "args.yaml")
    last = next(int(n) for name, n in writes if name == "last.pt")
    rng = random.Random(10)
    for _ in range(2):
        call = rng.randint(first + 1, last)
        with faults.inject("kill", f"SIGKILL at a random moment (call {call - first} of {last - first} between setup "
                                   "and last.pt)"):
            proc = run(fgcli_cmd("train", "--resume", str(run_dir), fault=True), f"calls:{call}")
            assert proc.returncode == -signal.SIGKILL, f"call {call}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
            assert assert_run_whole(run_dir)["last.pt"]["epoch"] == before
    with faults.inject("kill", "resume after all kills: same final state as the uninterrupted run"):
        done = run(fgcli_cmd("train", "--resume", str(run_dir)))
        assert done.returncode == 0, done.stdout + done.stderr
        assert_identical(reference, state(run_dir / "weights" / "last.pt"))
        assert_identical(state(tmp_path / "full" / "weights" / "best.pt"), state(run_dir / "weights" / "best.pt"))
        assert strip_times(read_results_csv(run_dir / "results.csv")) == \
            strip_times(read_results_csv(tmp_path / "full" / "results.csv"))
        assert not list(run_dir.rglob(".*.tmp"))  # temp files of killed writes are cleaned up on resume
