"""5. Bad flags and configs: unknown keys, wrong types, negative sizes, unknown names -> exit 1 and one line
that names the bad thing and the valid choices (or range)."""

from __future__ import annotations

import pytest
from exportkit import make_checkpoint_file
from typer.testing import CliRunner

from fgcli.cli import app

runner = CliRunner()
TRAIN = ["train", "--data", "demo", "--backbone", "test_resnet", "--device", "cpu"]

# (argv, what the error line must contain: the bad value / key and the valid choices or range)
CASES = {
    "unknown key": (TRAIN + ["--set", "optim.lrr=0.1"], ["unknown key 'optim.lrr'", "Did you mean 'lr'?",
                                                       "Valid keys here"]),
    "unknown section": (TRAIN + ["--set", "trian.epochs=2"], ["unknown key 'trian'", "Did you mean 'train'?"]),
    "wrong type int": (TRAIN + ["--set", "train.epochs=ten"], ["train.epochs must be an integer", "'ten'"]),
    "wrong type bool": (TRAIN + ["--set", "train.ema=maybe"], ["train.ema must be true or false"]),
    "wrong type list": (TRAIN + ["--set", "data.mean=fast"], ["data.mean must be a list"]),
    "wrong type mapping": (TRAIN + ["--set", "optim=5"], ["'optim' must be a mapping"]),
    "negative batch size": (TRAIN + ["--batch-size", "-4"], ["'--batch-size'", "greater than or equal to 1"]),
    "negative epochs": (TRAIN + ["--epochs", "-1"], ["'--epochs'", "greater than or equal to 1"]),
    "negative batch size in --set": (TRAIN + ["--set", "train.batch_size=-4"], ["train.batch_size must be >= 1",
                                                                               "(got -4)"]),
    "negative image size": (TRAIN + ["--img-size", "-32"], ["data.img_size must be >= 8", "(got -32)"]),
    "zero lr": (TRAIN + ["--lr", "0"], ["optim.lr must be > 0"]),
    "fraction out of range": (TRAIN + ["--set", "data.val_fraction=1.5"], ["data.val_fraction must be in [0, 1)"]),
    "bad choice": (TRAIN + ["--set", "sched.name=linear"], ["sched.name must be one of cosine, step, none",
                                                          "(got 'linear')"]),
    "unknown method": (TRAIN + ["--method", "herb"], ["unknown method 'herb'", "Did you mean 'herbs'?", "Valid:"]),
    "unknown backbone": (TRAIN + ["--backbone", "resnet51"], ["unknown backbone 'resnet51'", "Did you mean",
                                                              "Valid:"]),
    "unknown optimizer": (TRAIN + ["--set", "optim.name=adamx", "--epochs", "1"], ["unknown optimizer", "'adamx'", "Did you mean 'adamax'?", "Valid:"]),
    "bad device": (TRAIN + ["--device", "tpu"], ["--device tpu is not valid", "auto, cpu, cuda or cuda:N"]),
    "--set without =": (TRAIN + ["--set", "optim.lr"], ["must look like key=value"]),
    "unknown recipe": (["train", "--recipe", "herbs_cub_nope"], ["recipe 'herbs_cub_nope' not found", "one of:"]),
    "unknown data format": (["prepare-data", "cubb", "/tmp"], ["unknown data set format 'cubb'", "Did you mean 'cub'?"]),
    "negative fraction": (["prepare-data", "demo", "--val-fraction", "-0.5"], ["--val-fraction must be in [0, 1)",
                                                                              "-0.5"]),
    "unknown exporter": (["export", "{ckpt}", "--onnx", "--exporter", "tensorrt"], ["unknown exporter 'tensorrt'",
                                                                                   "Valid:"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_flag_or_config_is_one_clear_line(case, faults, tmp_path, monkeypatch) -> None:
    argv, expected = CASES[case]
    if "{ckpt}" in argv:
        ckpt = make_checkpoint_file(tmp_path.parent / f"{tmp_path.name}-ckpt")
        argv = [str(ckpt) if a == "{ckpt}" else a for a in argv]
    monkeypatch.chdir(tmp_path)  # nothing may be written, wherever the command runs
    with faults.inject("config", case):
        result = runner.invoke(app, argv)
        assert result.exit_code in (1, 2), result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output
        text = " ".join(result.output.replace("│", " ").split())  # typer's usage errors come in a box
        for part in expected:
            assert part in text, f"{part!r} not in {result.output!r}"
        assert list(tmp_path.iterdir()) == []


def test_unknown_key_in_a_recipe_file_is_one_clear_line(tmp_path, faults) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("method: baseline\ntrain:\n  epochs: 2\n  batchsize: 8\n")
    with faults.inject("config", "unknown key in a recipe YAML"):
        result = runner.invoke(app, ["train", "--recipe", str(recipe), "--data", "demo"])
        assert result.exit_code == 1
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and f"recipe {recipe}" in errors[0] and "unknown key 'train.batchsize'" in errors[0]
        assert "Did you mean 'batch_size'?" in errors[0]
    recipe.write_text("train: [1, 2\n")
    with faults.inject("config", "malformed recipe YAML"):
        result = runner.invoke(app, ["train", "--recipe", str(recipe), "--data", "demo"])
        assert result.exit_code == 1 and "is not valid YAML" in result.output
