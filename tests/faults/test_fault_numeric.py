"""6. Numerical faults: NaN / Inf injected into the loss or the gradients. An isolated bad step is skipped
(weights untouched) and reported; a persistent one stops the run (exit 1) with last.pt / best.pt of the last
good epoch intact."""

from __future__ import annotations

import pytest
from faultkit import TRAIN_FAST, assert_run_whole, poison_method
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import read_results_csv

runner = CliRunner()
MODES = ["loss-nan", "loss-inf", "grad-nan", "grad-inf"]



def _train(tmp_path, epochs: int, *extra: str):
    return runner.invoke(app, ["train", "--method", "poison_test", *TRAIN_FAST, "--epochs", str(epochs),
                               "--project", str(tmp_path), *extra])


@pytest.mark.parametrize("mode", MODES)
def test_isolated_non_finite_steps_are_skipped_and_reported(tmp_path, faults, fgcli_log, mode) -> None:
    cls = poison_method()
    cls.steps, cls.bad_steps, cls.mode = 0, {1, 4}, mode  # 3 updates per epoch: the 2nd of epochs 1 and 2
    with faults.inject("numeric", f"{mode}, isolated steps"):
        result = _train(tmp_path, 2)
        assert result.exit_code == 0, result.output
        what = "loss" if mode.startswith("loss") else "gradient"
        skipped = [m for m in fgcli_log if f"non-finite {what} at epoch" in m and "step skipped" in m]
        assert len(skipped) == 2, fgcli_log
        rows = read_results_csv(tmp_path / "exp" / "results.csv")
        assert [float(r["train/skipped"]) for r in rows] == [1.0, 1.0]
        ckpts = assert_run_whole(tmp_path / "exp")  # finite weights everywhere
        assert ckpts["last.pt"]["global_step"] == 6


@pytest.mark.parametrize("mode", MODES)
def test_persistent_non_finite_steps_stop_with_the_last_good_checkpoint(tmp_path, faults, mode) -> None:
    cls = poison_method()
    cls.steps, cls.bad_steps, cls.mode = 0, set(range(3, 1000)), mode  # epoch 1 is fine, then never again
    with faults.inject("numeric", f"{mode}, persistent"):
        result = _train(tmp_path, 3, "--set", "train.max_nonfinite=2")
        assert result.exit_code == 1
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "2 consecutive non-finite steps" in errors[0], result.output
        assert "last.pt keeps the last good epoch" in " ".join(result.output.split())
        ckpts = assert_run_whole(tmp_path / "exp")
        assert ckpts["last.pt"]["epoch"] == 1 and ckpts["best.pt"]["epoch"] == 1
        assert [r["epoch"] for r in read_results_csv(tmp_path / "exp" / "results.csv")] == ["1"]
