"""benchmarks/_cli.run_state: whether a benchmark's run folder is new, resumable or finished."""

from __future__ import annotations

import pytest
import torch
from benchkit import load_benchmark


@pytest.fixture(scope="module")
def cli():
    return load_benchmark("_cli")


def _run(tmp_path, epoch: int, epochs: int, calibrated: bool = True, **extra):
    weights = tmp_path / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    last = {"method": "baseline", "epoch": epoch, "config": {"train": {"epochs": epochs}},
            "history": [{"epoch": 1, "val/top1": 50.0}], **extra}
    torch.save(last, weights / "last.pt")
    torch.save({"calibration": {"temperature": 1.0}} if calibrated else {}, weights / "best.pt")
    return tmp_path


@pytest.mark.parametrize(("epoch", "extra", "calibrated", "state"), [
    (2, {}, True, "stopped"),  # epochs left: resume
    (5, {}, True, "finished"),
    (5, {}, False, "stopped"),  # killed during the end-of-run calibration: --resume does only that
    (2, {"early_stop": {"epoch": 2, "best_epoch": 1, "patience": 1}}, True, "finished"),  # train.patience ended it
    (2, {"early_stop": {"epoch": 2, "best_epoch": 1, "patience": 1}}, False, "stopped"),
    (5, {"method": "probe"}, False, "new"),  # a fitted method is fitted again
])
def test_run_state(cli, tmp_path, epoch, extra, calibrated, state) -> None:
    assert cli.run_state(_run(tmp_path, epoch, 5, calibrated, **extra)) == state


def test_a_folder_without_last_pt_is_new(cli, tmp_path) -> None:
    assert cli.run_state(tmp_path) == "new"
