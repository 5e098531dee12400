"""`--logger tensorboard / mlflow`, checked with the libraries' own readers: scalars, params, artifacts, resume."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import read_results_csv

pytest.importorskip("tensorboard", reason="needs the tensorboard extra (part of the test extra)")
pytest.importorskip("mlflow", reason="needs the mlflow extra (part of the test extra)")

runner = CliRunner()
TINY = ["--method", "herbs", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8",
        "--workers", "0", "--device", "cpu", "--set", "data.demo_size=32", "--set", "data.demo_classes=4",
        "--set", "data.demo_per_class=8", "--set", "data.val_fraction=0.25", "--set", "herbs.fpn_size=8",
        "--set", "herbs.num_selects=[0.25,0.25,0.25,0.25]", "--set", "sched.warmup=0"]


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _mlflow(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A 1-epoch HERBS run with both trackers, resumed to 3 epochs."""
    tmp = tmp_path_factory.mktemp("trackers")
    uri = (tmp / "mlruns").as_uri()
    common = [*TINY, "--project", str(tmp / "runs"), "--name", "exp"]
    first = runner.invoke(app, ["train", *common, "--epochs", "1", "--logger", "tensorboard", "--logger", "mlflow",
                                "--set", f"log.mlflow_uri={uri}"])
    assert first.exit_code == 0, first.output
    run_dir = tmp / "runs" / "exp"
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir), "--epochs", "3", "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    return run_dir, uri, run_id


def test_tensorboard_scalars_every_epoch_once_across_resume(tracked) -> None:
    run_dir, _, _ = tracked
    acc = _events(run_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/refine", "train/drop", "train/comb", "val/top1", "val/top5", "val/comb/top1",
                "val/td1/top1", "train_img_s", "lr/base", "lr/backbone", "lr/heads"):
        assert tag in tags, (tag, sorted(tags))
    steps = [e.step for e in acc.Scalars("val/top1")]
    assert steps == [1, 2, 3]  # no duplicate step after the resume
    rows = {r["epoch"]: r for r in read_results_csv(run_dir / "results.csv")}
    assert [round(e.value, 3) for e in acc.Scalars("val/top1")] == [round(float(rows[str(s)]["val/top1"]), 3)
                                                                  for s in (1, 2, 3)]
    assert "config" in " ".join(acc.Tags()["tensors"])  # add_text is stored as a tensor summary
    assert {"results", "confusion_matrix"} <= set(acc.Tags()["images"])


def test_mlflow_run_has_params_metrics_and_artifacts_and_resume_continues_it(tracked) -> None:
    run_dir, uri, run_id = tracked
    client = _mlflow(uri)
    runs = client.search_runs([client.get_experiment_by_name("fgcli").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # the resume continued the same run
    run = client.get_run(run_id)
    assert run.data.params["method"] == "herbs" and run.data.params["model.backbone"] == "test_resnet"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val/top1")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert {"train/loss", "lr/heads", "val/comb/top1"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"best.pt", "args.yaml", "results.csv", "results.png", "confusion_matrix.png"} <= artifacts


def test_a_failing_tracker_warns_and_training_goes_on(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--project", str(tmp_path / "runs"),
                                 "--logger", "mlflow", "--set", "log.mlflow_uri=http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "exp" / "weights" / "best.pt").is_file()
    log = (tmp_path / "runs" / "exp" / "log.txt").read_text()
    assert "mlflow start failed" in log and "tracking is off" in log


def test_unknown_logger_is_a_one_line_error(tmp_path) -> None:
    result = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--project", str(tmp_path / "runs"),
                                 "--logger", "wandb"])
    assert result.exit_code == 1
    assert "logger" in result.output and "tensorboard" in result.output
