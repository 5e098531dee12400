"""Atomic writes and the config model's overrides and errors."""

from __future__ import annotations

import os

import pytest

from fgcli.config import Config, from_dict, load_yaml, parse_overrides, resolve_config, save_yaml
from fgcli.errors import UserError
from fgcli.io import atomic_open, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_failed_write_keeps_previous_file(tmp_path) -> None:
    target = tmp_path / "a.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half")
        raise RuntimeError("boom mid-write")
    assert target.read_text() == "good"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_overrides_parse_yaml_values() -> None:
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=true", "e=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": True,
                                                                        "e": "x"}
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["novalue"])


def test_unknown_key_suggests_closest_and_lists_valid() -> None:
    with pytest.raises(UserError) as e:
        from_dict({"optim": {"lrr": 0.1}})
    assert "optim.lrr" in str(e.value) and "Did you mean 'lr'" in str(e.value) and "optim.momentum" in str(e.value)


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "must be an integer"),
    ("optim.lr=fast", "must be a number"),
    ("train.amp=maybe", "true or false"),
    ("train.batch_size=-4", "batch_size must be >= 1"),
    ("herbs.fusion=max", "herbs.fusion"),
])
def test_wrong_types_and_ranges_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        resolve_config(overrides=[override])
    assert "\n" not in str(e.value)


def test_precedence_recipe_config_flags_set(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {epochs: 5, batch_size: 4}\noptim: {lr: 0.5}\nmethod: herbs\n")
    cfg_file = tmp_path / "args.yaml"
    cfg_file.write_text("train: {epochs: 6}\n")
    cfg = resolve_config(recipe=recipe, config_file=cfg_file, flags={"train.epochs": 7, "optim.lr": None},
                         overrides=["train.batch_size=9"])
    assert (cfg.method, cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == ("herbs", 7, 9, 0.5)


def test_yaml_round_trip(tmp_path) -> None:
    cfg = resolve_config(overrides=["herbs.num_selects=[0.5, 0.25, 0.25, 0.125]", "data.img_size=64"])
    save_yaml(cfg, tmp_path / "args.yaml")
    again = from_dict(load_yaml(tmp_path / "args.yaml"))
    assert again == cfg
    assert isinstance(Config(), Config)
