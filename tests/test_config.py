"""Config precedence for `fgcli train`: defaults < recipe < --config < flags < --set; demo recipe; resume rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fgcli.config import Config, load_yaml, resolve_config, save_yaml, to_dict
from fgcli.engine.runconfig import RESUME_MUTABLE, resume_config, train_config
from fgcli.errors import UserError
from fgcli.methods import list_methods


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_each_layer_overrides_the_one_below(tmp_path) -> None:
    recipe = _write(tmp_path / "r.yaml", {"optim": {"lr": 0.1, "momentum": 0.5}, "train": {"epochs": 3, "seed": 1},
                                         "model": {"backbone": "test_resnet"}, "data": {"hflip": 0.1}})
    config = _write(tmp_path / "c.yaml", {"optim": {"lr": 0.2}, "train": {"epochs": 4, "batch_size": 7}})
    cfg = resolve_config(recipe, config, {"train.epochs": 5, "train.seed": None}, ["train.epochs=6"])
    assert cfg.train.epochs == 6  # --set beats the flag, --config and the recipe
    assert cfg.optim.lr == 0.2  # --config beats the recipe
    assert cfg.optim.momentum == 0.5  # recipe beats the defaults
    assert cfg.train.batch_size == 7
    assert cfg.train.seed == 1  # a flag left unset (None) does not override
    assert cfg.data.hflip == 0.1
    assert cfg.data.workers == Config().data.workers  # untouched default
    cfg2 = resolve_config(recipe, config, {"train.epochs": 5}, None)
    assert cfg2.train.epochs == 5  # the flag beats --config


def test_args_yaml_reproduces_the_config(tmp_path) -> None:
    cfg = resolve_config(None, None, {"model.backbone": "test_resnet", "train.epochs": 2},
                         ["optim.lr=0.003", "herbs.num_selects=[8, 4, 2, 1]"])
    save_yaml(cfg, tmp_path / "args.yaml")
    again = resolve_config(None, tmp_path / "args.yaml", {}, None)
    assert to_dict(again) == to_dict(cfg)
    assert load_yaml(tmp_path / "args.yaml")["optim"]["lr"] == 0.003


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (Path(__file__).parent.parent / "models").glob("*.yaml")))
def test_every_shipped_recipe_resolves(recipe: str) -> None:
    cfg = train_config(recipe, None, {}, None)  # validates ranges too
    assert cfg.method in list_methods()


def test_demo_data_without_a_recipe_uses_the_demo_recipe() -> None:
    cfg = train_config(None, None, {"method": "baseline", "data.path": "demo"}, None)
    demo = load_yaml("models/baseline_demo_cpu.yaml")
    assert cfg.model.backbone == demo["model"]["backbone"]
    assert cfg.train.epochs == demo["train"]["epochs"]
    # a flag still beats the demo recipe, and --backbone (or --set model.backbone) switches it off
    assert train_config(None, None, {"data.path": "demo", "train.epochs": 1}, None).train.epochs == 1
    assert train_config(None, None, {"data.path": "demo", "model.backbone": "test_resnet"}, None).train.epochs \
        == Config().train.epochs
    assert train_config(None, None, {"data.path": "demo"}, ["model.backbone=test_vit"]).model.backbone == "test_vit"
    # other data: plain defaults
    assert train_config(None, None, {"data.path": "./somewhere"}, None).model.backbone == Config().model.backbone


def test_resume_allows_only_safe_changes() -> None:
    saved = to_dict(resolve_config(None, None, {"train.epochs": 3}, None))
    cfg = resume_config(saved, {"train.epochs": 5, "data.workers": 0, "method": "baseline"}, None)
    assert cfg.train.epochs == 5 and cfg.data.workers == 0
    with pytest.raises(UserError, match="optim.lr cannot change"):
        resume_config(saved, {}, ["optim.lr=0.5"])
    with pytest.raises(UserError, match="train.batch_size"):
        resume_config(saved, {"train.batch_size": 3}, None)
    assert "train.epochs" in RESUME_MUTABLE


def test_bad_override_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="unknown key 'optim.lrr'.*Did you mean 'lr'"):
        train_config(None, None, {}, ["optim.lrr=0.1"])
    with pytest.raises(UserError, match="train.epochs must be an integer"):
        train_config(None, None, {}, ["train.epochs=two"])


def test_a_saved_config_drops_sections_of_methods_this_process_does_not_know():
    """A run written where a plugin method was registered carries that method's section too: a baseline
    checkpoint still loads where the plugin is absent, while a run of the unknown method itself is refused."""
    from fgcli.config import Config, from_saved, to_dict
    from fgcli.errors import UserError

    data = to_dict(Config())
    data["plugin_method"] = {"width": 3}
    cfg = from_saved(data)
    assert cfg.method == data["method"] and not hasattr(cfg, "plugin_method")
    with pytest.raises(UserError, match="plugin_method"):
        from_saved({**data, "method": "plugin_method"})
