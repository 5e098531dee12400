"""Quick runs just work: `--epochs 1` with a recipe's (or the defaults') warm-up trains instead of refusing.

A warm-up that comes from a recipe or the defaults and would cover the whole run is cut to a share of it
(one INFO line says so); a warm-up the user set with --set / a flag that cannot fit is still an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.config import recipe_folders, resolve_config
from fgcli.engine.optim import WARMUP_SHARE, build_scheduler, fit_warmup, warmup_updates
from fgcli.engine.runconfig import train_config
from fgcli.errors import UserError
from fgcli.methods import get_method, list_methods

runner = CliRunner()
RECIPES = sorted(p.stem for p in (Path(__file__).parent.parent / "models").glob("*.yaml"))
TINY_DEMO = ["--set", "data.demo_per_class=4", "--set", "data.demo_classes=3", "--set", "data.val_fraction=0.34",
             "--workers", "0", "--device", "cpu", "--batch-size", "4"]


@pytest.mark.parametrize("method", [m for m in list_methods() if get_method(m).fitted_by == "loop"])
def test_one_epoch_demo_run_of_every_method(tmp_path: Path, method: str) -> None:
    """`fgcli train --method M --data demo --epochs 1`: the demo recipe's 1-epoch warm-up is shortened."""
    result = runner.invoke(app, ["train", "--method", method, "--data", "demo", "--epochs", "1", *TINY_DEMO,
                                 "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "sched.warmup (1 epochs) would cover the whole run" in " ".join(result.output.split())
    args = yaml.safe_load((tmp_path / "exp" / "args.yaml").read_text())
    assert args["train"]["epochs"] == 1 and args["sched"]["warmup"] < 1  # args.yaml records what ran
    assert (tmp_path / "exp" / "weights" / "last.pt").is_file()


def test_an_explicit_warmup_that_cannot_fit_is_still_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--method", "baseline", "--data", "demo", "--epochs", "1", *TINY_DEMO,
                                 "--set", "sched.warmup=1", "--project", str(tmp_path)])
    assert result.exit_code == 1
    assert "covers the whole run" in " ".join(result.output.split())


def _scheduler(cfg, updates_per_epoch: int):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    return build_scheduler(opt, cfg, updates_per_epoch)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("updates_per_epoch", [1, 3, 375])
def test_every_shipped_recipe_schedules_a_one_epoch_run(recipe: str, updates_per_epoch: int) -> None:
    cfg = train_config(recipe, None, {"train.epochs": 1}, None)
    fit_warmup(cfg, updates_per_epoch)
    sched = _scheduler(cfg, updates_per_epoch)  # would raise if the warm-up still covered the run
    total = updates_per_epoch
    assert warmup_updates(cfg, updates_per_epoch) <= int(total * WARMUP_SHARE) or cfg.sched.name == "none"
    for t in range(total + 1):
        sched.step_update(t)


def test_a_warmup_that_fits_is_left_alone() -> None:
    cfg = resolve_config(None, None, {"train.epochs": 10, "sched.warmup": 1.0}, None)
    assert fit_warmup(cfg, 5) is None and cfg.sched.warmup == 1.0
    cfg = resolve_config(None, None, {"train.epochs": 1, "sched.warmup": 1.0}, None)
    assert fit_warmup(cfg, 5, explicit=True) is None and cfg.sched.warmup == 1.0
    with pytest.raises(UserError, match="covers the whole run"):
        _scheduler(cfg, 5)
    message = fit_warmup(cfg, 5)
    assert message is not None and "shortened to 0.2 epochs (1 updates" in message


def test_recipes_are_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_config(None, None, {"method": "herbs", "data.path": "demo"}, None).herbs.fpn_size == 64
    assert any((folder / "herbs_demo_cpu.yaml").is_file() for folder in recipe_folders())


def test_demo_without_its_recipe_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fgcli.config

    monkeypatch.setattr(fgcli.config, "recipe_folders", lambda: [tmp_path])
    with pytest.raises(UserError, match="--data demo needs the demo recipe 'herbs_demo_cpu'"):
        train_config(None, None, {"method": "herbs", "data.path": "demo"}, None)


def test_a_recipes_head_first_epochs_are_cut_to_fit_a_short_run_but_an_explicit_value_is_refused() -> None:
    cfg = train_config("herbs_lite0_224_cub", None, {"train.epochs": 1}, None)
    assert cfg.model.freeze_epochs == 0  # the recipe's 2 head-first epochs would cover the 1-epoch run
    assert train_config("herbs_lite0_224_cub", None, {"train.epochs": 10}, None).model.freeze_epochs == 2
    with pytest.raises(UserError, match="model.freeze_epochs must be >= 0 and below train.epochs"):
        train_config("herbs_lite0_224_cub", None, {"train.epochs": 2}, ["model.freeze_epochs=2"])
