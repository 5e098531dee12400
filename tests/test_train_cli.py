"""End-to-end `fgcli train` on a tiny demo with a timm test_* backbone: artifacts, resume, accumulation.

NaN / Inf handling, kills and interrupts are in tests/faults/."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import epochs_left, read_results_csv

runner = CliRunner()


TINY_DATA = ["--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8",
             "--set", "data.val_fraction=0.25"]
TINY = ["--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "0",
        "--lr", "0.05", "--device", "cpu", *TINY_DATA]


def _train(tmp_path, *extra: str, name: str = "exp"):
    return runner.invoke(app, ["train", "--method", "baseline", *TINY, "--project", str(tmp_path / "runs"),
                               "--name", name, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run shared by the artifact / resume / eval tests."""
    tmp = tmp_path_factory.mktemp("train")
    result = _train(tmp, "--epochs", "2", "--ema")
    assert result.exit_code == 0, result.output
    return tmp, tmp / "runs" / "exp", result.output


def test_run_folder_has_every_artifact(trained) -> None:
    _, run, output = trained
    for name in ("args.yaml", "results.csv", "results.png", "confusion_matrix.png", "log.txt", "weights/last.pt",
                 "weights/best.pt"):
        assert (run / name).is_file(), name
    rows = read_results_csv(run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:3] == ["epoch", "time", "lr"] and list(rows[0])[-1] == "epoch_time"
    for col in ("train/loss", "train/ce", "train/skipped", "val/top1", "val/top5"):
        assert col in rows[0]
        assert all(math.isfinite(float(r[col])) for r in rows)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["model"]["backbone"] == "test_resnet" and args["train"]["epochs"] == 2 and args["train"]["ema"]
    log = (run / "log.txt").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log
    assert "next: fgcli eval" in output and "fgcli export" in output


def test_checkpoints_follow_the_contract(trained) -> None:
    _, run, _ = trained
    last = torch.load(run / "weights" / "last.pt", weights_only=True)
    best = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert last["format_version"] == 1 and last["epoch"] == 2 and last["method"] == "baseline"
    assert last["backbone"] == "test_resnet" and len(last["classes"]) == 4
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in last["model"])
    assert last["ema"] is not None and last["optimizer"] is not None and last["scheduler"] is not None
    assert last["dataset"]["num_train"] == 24 and last["dataset"]["num_val"] == 8
    assert last["preprocess"]["img_size"] == 32
    rows = read_results_csv(run / "results.csv")
    top1 = [float(r["val/top1"]) for r in rows]
    assert best["best_epoch"] == best["epoch"] == 1 + top1.index(max(top1))
    assert best["best_metric"] == pytest.approx(max(top1), abs=1e-3)


def test_resume_continues_to_more_epochs(trained, tmp_path) -> None:
    import shutil

    _, run, _ = trained
    copy = tmp_path / "exp"
    shutil.copytree(run, copy)
    result = runner.invoke(app, ["train", "--resume", str(copy), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    said = "".join(result.output.split())  # rich wraps long lines anywhere
    assert "".join(f"resuming run {copy} from {copy / 'weights' / 'last.pt'}: epoch 2 of 3 done, continuing with "
                   "epoch 3".split()) in said
    rows = read_results_csv(copy / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert torch.load(copy / "weights" / "last.pt", weights_only=True)["epoch"] == 3
    # a finished run cannot resume without more epochs; changing the recipe is refused
    again = runner.invoke(app, ["train", "--resume", str(copy / "weights" / "last.pt")])
    assert again.exit_code == 1 and "already finished 3 of 3" in again.output
    bad = runner.invoke(app, ["train", "--resume", str(copy), "--epochs", "4", "--lr", "0.5"])
    assert bad.exit_code == 1 and "optim.lr cannot change" in bad.output


def test_eval_writes_the_report(trained, tmp_path) -> None:
    _, run, _ = trained
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--data", "demo", "--split", "val",
                                 "--out", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_samples"] == 8 and metrics["num_classes"] == 4
    best = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert metrics["top1"] == pytest.approx(best["best_metric"], abs=1e-3)  # same split, same weights (EMA)
    lines = (out / "per_class_accuracy.csv").read_text().splitlines()
    assert lines[0] == "index,class,num_samples,correct,accuracy" and len(lines) == 5
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert "top-1" in result.output
    # without --data: the data set the run was trained on (here the tiny demo its args.yaml describes)
    test = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--out", str(tmp_path / "t"),
                               "--workers", "0"])
    assert test.exit_code == 0, test.output
    report = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert report["split"] == "test" and report["data"] == "demo" and report["num_classes"] == 4
    onnx = runner.invoke(app, ["eval", str(tmp_path / "model.onnx")])
    assert onnx.exit_code == 1 and "model.onnx does not exist" in onnx.output


def test_eval_refuses_data_with_other_classes(trained, tmp_path) -> None:
    from PIL import Image

    _, run, _ = trained
    folder = tmp_path / "flowers"
    for cls in ("daisy", "rose"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 40, 100, 50)).save(folder / cls / f"{i}.png")
    result = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--data", str(folder), "--split", "train",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "classes do not match" in result.output and "only in the data: ['daisy', 'rose']" in result.output


def test_config_file_reproduces_a_run(trained, tmp_path) -> None:
    _, run, _ = trained
    result = runner.invoke(app, ["train", "--config", str(run / "args.yaml"), "--epochs", "1", "--project",
                                 str(tmp_path), "--name", "again"])
    assert result.exit_code == 0, result.output
    args = yaml.safe_load((tmp_path / "again" / "args.yaml").read_text())
    original = yaml.safe_load((run / "args.yaml").read_text())
    args["train"].update(epochs=2, project=original["train"]["project"], name="exp")
    assert args == original


def test_bad_inputs_are_one_line_errors(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--method", "nope", *TINY, "--project", str(tmp_path)])
    assert result.exit_code == 1 and "unknown method 'nope'" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "missing.pt"), "--data", "demo"])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "--resume" in result.output


def test_gradient_accumulation_matches_one_big_batch(tmp_path) -> None:
    """24 training images: 1 x 24, 3 full micro-batches of 8, and a partial group (accum 5 over 3 batches)
    divided by its own size must all give the same single update (LayerNorm model, no augmentation)."""
    common = ["--method", "baseline", "--data", "demo", "--backbone", "test_convnext", "--img-size", "32",
              "--workers", "0", "--lr", "0.1", "--device", "cpu", "--epochs", "1", *TINY_DATA,
              "--set", "data.hflip=0.0", "--set", "sched.name=none", "--project", str(tmp_path)]
    states = []
    for name, batch, accum in (("big", 24, 1), ("accum3", 8, 3), ("partial", 8, 5)):
        result = runner.invoke(app, ["train", *common, "--batch-size", str(batch), "--accum-steps", str(accum),
                                     "--name", name])
        assert result.exit_code == 0, result.output
        ckpt = torch.load(tmp_path / name / "weights" / "last.pt", weights_only=True)
        assert ckpt["global_step"] == 1
        states.append(ckpt["model"])
    for other in states[1:]:
        for k, v in states[0].items():
            torch.testing.assert_close(other[k], v, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
def test_train_and_eval_on_flowers12(flowers12, tmp_path) -> None:
    """A real ImageFolder (train/ + test/, 12 species): val carved from train, test kept for eval."""
    import shutil

    data = tmp_path / "flowers12"
    shutil.copytree(flowers12, data, ignore=shutil.ignore_patterns("train_augmented"))  # manifest lands in tmp
    result = runner.invoke(app, ["train", "--method", "baseline", "--data", str(data), "--backbone", "test_resnet",
                                 "--img-size", "64", "--batch-size", "32", "--workers", "0", "--epochs", "1",
                                 "--device", "cpu", "--project", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "exp"
    ckpt = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert len(ckpt["classes"]) == 12 and "bluebell" in ckpt["classes"]
    assert ckpt["dataset"]["num_train"] + ckpt["dataset"]["num_val"] == 720
    assert ckpt["preprocess"]["img_size"] == 64
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--data", str(data), "--out", str(out),
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == 240 and metrics["num_classes"] == 12
    assert len((out / "per_class_accuracy.csv").read_text().splitlines()) == 13


def test_quiet_silences_the_terminal_but_not_log_txt(tmp_path) -> None:
    result = runner.invoke(app, ["--quiet", "train", "--method", "baseline", *TINY, "--epochs", "1", "--project",
                                 str(tmp_path), "--name", "quiet"])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" not in result.output
    log = (tmp_path / "quiet" / "log.txt").read_text()
    assert "epoch 1/1" in log and "training baseline on test_resnet" in log


def test_torchvision_decoder_trains(tmp_path) -> None:
    result = _train(tmp_path, "--epochs", "1", "--set", "data.decoder=torchvision")
    assert result.exit_code == 0, result.output
    assert "decoder: torchvision" in (tmp_path / "runs" / "exp" / "args.yaml").read_text()
    bad = _train(tmp_path, "--epochs", "1", "--set", "data.decoder=opencv", name="bad")
    assert bad.exit_code == 1 and "data.decoder must be 'pil' or 'torchvision'" in bad.output


def test_patience_stops_early_calibrates_and_refuses_to_resume_until_raised(tmp_path) -> None:
    """A learning rate too small to move the weights and fixed batch-norm statistics: val top-1 repeats, so with
    train.patience 1 the run stops after epoch 2 of 5, still does the end-of-run calibration, and --resume refuses
    until the patience is raised."""
    frozen = ["--epochs", "5", "--lr", "1e-12", "--set", "sched.name=none", "--set", "model.freeze_bn_stats=true"]
    result = _train(tmp_path, *frozen, "--set", "train.patience=1")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "exp"
    assert [r["epoch"] for r in read_results_csv(run / "results.csv")] == ["1", "2"]
    assert "stopping early after epoch 2 of 5" in (run / "log.txt").read_text()
    assert "stopped early" in result.output
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert last["early_stop"] == {"epoch": 2, "best_epoch": 1, "patience": 1} and not epochs_left(last)
    assert "calibration" in torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=True)

    refused = runner.invoke(app, ["train", "--resume", str(run)])
    assert refused.exit_code == 1 and "train.patience" in refused.output and "stopped early" in refused.output
    more = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.patience=2"])
    assert more.exit_code == 0, more.output
    assert [r["epoch"] for r in read_results_csv(run / "results.csv")] == ["1", "2", "3"]
    assert torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)["early_stop"]["epoch"] == 3


def _undo_end_of_run(run) -> None:
    """What a kill during the end-of-run work leaves: every epoch saved, best.pt not yet calibrated."""
    best = run / "weights" / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    del ckpt["calibration"]
    torch.save(ckpt, best)
    (run / "confusion_matrix.png").unlink()


def test_resume_of_a_run_killed_in_its_end_of_run_work_does_only_that_work(trained, tmp_path) -> None:
    import shutil

    _, run, _ = trained
    copy = tmp_path / "exp"
    shutil.copytree(run, copy)
    _undo_end_of_run(copy)
    before = torch.load(copy / "weights" / "last.pt", map_location="cpu", weights_only=True)
    result = runner.invoke(app, ["train", "--resume", str(copy)])
    assert result.exit_code == 0, result.output
    assert "theend-of-runworkisnot;doingonlythat" in "".join(result.output.split())  # rich wraps anywhere
    assert "calibration" in torch.load(copy / "weights" / "best.pt", map_location="cpu", weights_only=True)
    assert (copy / "confusion_matrix.png").is_file()
    assert [r["epoch"] for r in read_results_csv(copy / "results.csv")] == ["1", "2"]  # no epoch trained again
    after = torch.load(copy / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert after["epoch"] == 2 and all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
    again = runner.invoke(app, ["train", "--resume", str(copy)])
    assert again.exit_code == 1 and "already finished 2 of 2" in again.output


def test_resume_of_an_early_stopped_run_killed_in_its_end_of_run_work_trains_no_epoch(tmp_path) -> None:
    frozen = ["--epochs", "5", "--lr", "1e-12", "--set", "sched.name=none", "--set", "model.freeze_bn_stats=true"]
    assert _train(tmp_path, *frozen, "--set", "train.patience=1").exit_code == 0
    run = tmp_path / "runs" / "exp"
    _undo_end_of_run(run)
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_results_csv(run / "results.csv")] == ["1", "2"]
    assert "calibration" in torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert last["early_stop"] == {"epoch": 2, "best_epoch": 1, "patience": 1}
    refused = runner.invoke(app, ["train", "--resume", str(run)])
    assert refused.exit_code == 1 and "stopped early" in refused.output


def test_patience_must_not_be_negative(tmp_path) -> None:
    result = _train(tmp_path, "--epochs", "1", "--set", "train.patience=-1")
    assert result.exit_code == 1 and "train.patience must be >= 0" in result.output


def test_head_init_probe_starts_fine_tuning_from_the_converged_probe(tmp_path) -> None:
    """LP-FT: with a learning rate too small to move the weights and fixed batch-norm statistics, the first epoch's
    val top-1 is the probe's own (the same features, head and val images), as `fgcli train --method probe` fits it."""
    frozen = ["--epochs", "1", "--lr", "1e-12", "--set", "sched.name=none", "--set", "model.freeze_bn_stats=true",
              "--set", "probe.l2_grid=[0.01,0.0001]"]
    tuned = _train(tmp_path, *frozen, "--set", "model.head_init=probe", name="lpft")
    assert tuned.exit_code == 0, tuned.output
    probe = runner.invoke(app, ["train", "--method", "probe", *TINY, "--set", "probe.l2_grid=[0.01,0.0001]",
                                "--project", str(tmp_path / "runs"), "--name", "probe"])
    assert probe.exit_code == 0, probe.output
    val = [float(read_results_csv(tmp_path / "runs" / n / "results.csv")[0]["val/top1"]) for n in ("lpft", "probe")]
    assert val[0] == pytest.approx(val[1])
    assert "head_init: the head starts from the linear probe (L2 " in (tmp_path / "runs" / "lpft" / "log.txt").read_text()
    head = torch.load(tmp_path / "runs" / "lpft" / "weights" / "last.pt", weights_only=True)["model"]
    fitted = torch.load(tmp_path / "runs" / "probe" / "weights" / "last.pt", weights_only=True)["model"]
    assert torch.allclose(head["classifier.weight"], fitted["classifier.weight"], atol=1e-6)


def test_head_init_probe_is_refused_for_a_method_without_one_linear_head(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--method", "herbs", *TINY, "--epochs", "1", "--set", "model.head_init=probe",
                                 "--set", "herbs.num_selects=[8,4,2,1]", "--project", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "model.head_init=probe" in result.output and "herbs" in result.output
