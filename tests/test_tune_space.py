"""`fgcli tune`'s search space: each method's declared space made concrete against the starting recipe,
`--space` files, and the one-line refusals before any trial runs (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.config import resolve_config
from fgcli.errors import UserError
from fgcli.methods import get_method, list_methods
from fgcli.searchspace import Param
from fgcli.tuning.space import decode, encode, load_space_file, resolve

runner = CliRunner()


def _base(recipe: str | None = "baseline_lite0_128", *sets: str):
    return resolve_config(recipe, None, None, list(sets))


def _dims(space) -> dict:
    return {d.key: d for d in space.dims}


#: the methods trained by the loop have a search space; the probe's fit chooses its L2 weight itself (tune refuses it)
@pytest.mark.parametrize("method", [m for m in list_methods() if get_method(m).fitted_by == "loop"])
def test_every_builtin_method_declares_a_space_reachable_from_the_registry(method: str) -> None:
    cls = get_method(method)
    keys = [p.key for p in cls.search_space]
    assert {"optim.lr", "optim.backbone_lr_scale", "model.freeze_bn_stats", "train.epochs",
            "optim.weight_decay", "sched.warmup"} <= set(keys)
    own = {"baseline": {"baseline.dropout"}, "herbs": {"herbs.num_selects", "herbs.fpn_size", "herbs.temp_step"},
           "mge": {"mge.box_threshold", "mge.share_backbone"}}.get(method, set())
    assert own <= set(keys) and "data.img_size" not in keys  # image size only when a --space file asks
    # the declared space resolves against the method's shipped recipe without error
    base = _base(cls.tune_recipe)
    space = resolve(cls.search_space, base, source="default",
                    defaults={"optim.backbone_lr_scale": cls.default_backbone_lr_scale})
    assert space.dims and all(d.key in space.start for d in space.dims)
    assert set(list_methods()) >= {"baseline", "herbs", "mge"}


def test_mge_shares_or_copies_its_trunk_only_in_the_space_of_a_trained_trunk() -> None:
    """Frozen copies of one pretrained trunk compute the same features as a shared one: with a frozen trunk
    (mge_frozen_lite0_128) the choice would change only the cost, so it is not searched."""
    space_of = get_method("mge").search_space
    frozen = resolve(space_of, _base("mge_frozen_lite0_128"), source="default")
    assert "mge.share_backbone" not in frozen.keys()
    assert "model.freeze is 'backbone', not 'none'" in frozen.skipped["mge.share_backbone"]
    trained = resolve(space_of, _base("mge_lite0_128"), source="default")
    assert _dims(trained)["mge.share_backbone"].choices == (False, True)


def test_relative_ranges_and_the_start_trial_follow_the_recipe() -> None:
    base = _base("baseline_lite0_128")  # adamw lr 1e-3, 12 epochs, wd 0.05, warmup 1, backbone scale 0.1
    dims = _dims(resolve(get_method("baseline").search_space, base, source="default"))
    assert (dims["optim.lr"].low, dims["optim.lr"].high, dims["optim.lr"].log) == pytest.approx((1e-4, 1e-2, True))
    assert (dims["train.epochs"].kind, dims["train.epochs"].low, dims["train.epochs"].high) == ("int", 6, 24)
    capped = _dims(resolve(get_method("baseline").search_space, base, source="default", epochs_high=16))
    assert (capped["train.epochs"].low, capped["train.epochs"].high) == (6, 16)
    space = resolve(get_method("baseline").search_space, base, source="default")
    assert space.start == {"optim.lr": 0.001, "optim.backbone_lr_scale": 0.1, "model.freeze_bn_stats": True,
                           "train.epochs": 12, "optim.weight_decay": 0.05, "sched.warmup": 1.0,
                           "baseline.dropout": 0.0, "model.head_init": "probe"}


def test_keys_given_by_flags_leave_the_space_and_inactive_keys_are_said() -> None:
    base = _base("linear_probe_lite0_128")  # model.freeze: backbone -> no backbone lr, no BN statistics
    space = resolve(get_method("baseline").search_space, base, source="default",
                    fixed_by={"optim.lr": "--lr", "train.epochs": "--epochs"})
    assert "optim.lr" not in space.keys() and space.fixed == {"optim.lr": "--lr", "train.epochs": "--epochs"}
    assert set(space.skipped) == {"optim.backbone_lr_scale", "model.freeze_bn_stats"}
    assert "model.freeze is 'backbone', not 'none'" in space.skipped["model.freeze_bn_stats"]


def test_ranges_widen_to_hold_the_start_and_choices_encode_lists() -> None:
    base = _base("herbs_lite0_128")  # num_selects [0.11, 0.22, 0.44, 0.22], fpn 128, lr 1e-3
    params = [Param("optim.lr", 0.01, 0.1, log=True), Param("herbs.num_selects", choices=((0.25,) * 4,)),
              Param("train.epochs", 2, 8, step=4)]
    space = resolve(params, base, source="test")
    dims = _dims(space)
    assert (dims["optim.lr"].low, dims["optim.lr"].high) == (0.001, 0.1) and "optim.lr" in space.widened
    assert dims["herbs.num_selects"].choices[0] == [0.11, 0.22, 0.44, 0.22]
    # a grid through the start (12 epochs), as many points as before: 2, 6 -> 4, 8, 12
    assert (dims["train.epochs"].low, dims["train.epochs"].high, dims["train.epochs"].step) == (4, 12, 4)
    assert encode([0.125, 0.125]) == "[0.125, 0.125]" and decode(encode([0.125, 0.125])) == [0.125, 0.125]
    assert encode(space.start["herbs.num_selects"]) in dims["herbs.num_selects"].distribution().choices


def test_a_space_file_replaces_the_default(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("optim:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nmodel.freeze_bn_stats: [true, false]\n"
                    "optim.backbone_lr_scale: {low: 0.5, high: 2, relative: true}\n")
    params = load_space_file(path)
    space = resolve(params, _base("baseline_lite0_128"), source=f"--space {path}")
    assert space.keys() == ["optim.lr", "model.freeze_bn_stats", "optim.backbone_lr_scale"]
    assert (space.dims[2].low, space.dims[2].high) == pytest.approx((0.05, 0.2))


@pytest.mark.parametrize("text,expected", [
    ("optim.lrr: {low: 0.001, high: 0.01}", "unknown key 'optim.lrr'. Did you mean 'optim.lr'?"),
    ("optim.lr: {low: 0, high: 0.01}", "optim.lr low 0 is outside the key's valid values (optim.lr must be > 0"),
    ("mge.box_threshold: {low: 0.1, high: 1.5}", "mge.box_threshold high 1.5 is outside the key's valid values"),
    ("baseline.dropout: [0.1, 1.2]", "baseline.dropout choice 1.2 is outside the key's valid values"),
    ("train.epochs: {low: 2.5, high: 8}", "train.epochs takes whole numbers"),
    ("optim.weight_decay: {low: 0.0, high: 0.1, log: true}", "with log: true needs low > 0"),
    ("data.path: [a, b]", "data.path cannot be searched"),
    ("model.freeze_bn_stats: {low: 0, high: 1}", "model.freeze_bn_stats holds a bool, not a number"),
    ("optim.lr: {low: 0.1, high: 0.01}", "optim.lr needs low < high"),
    ("optim.lr: {lo: 0.001, high: 0.01}", "optim.lr has an unknown field 'lo'. Did you mean 'low'?"),
    ("sched.name: [cosine, linear]", "sched.name choice linear is outside the key's valid values"),
])
def test_bad_space_files_are_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as info:
        resolve(load_space_file(path), _base("baseline_lite0_128"), source=f"--space {path}")
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert str(path) in message or "unknown field" in message


def test_the_cli_refuses_a_bad_space_before_any_trial(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("herbs.fpn_size: {low: 0, high: 64}\n")
    result = runner.invoke(app, ["tune", "--method", "herbs", "--data", "demo", "--trials", "3", "--space", str(path),
                                 "--project", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    assert "herbs.fpn_size low 0 is outside the key's valid values (herbs.fpn_size must be >= 1" in result.output
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_dry_run_prints_the_plan_with_fixed_keys(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tune", "--method", "herbs", "--data", "demo", "--trials", "5", "--lr", "0.01",
                                 "--set", "herbs.fpn_size=32", "--dry-run", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "fixed optim.lr = 0.01 (given by --lr: not searched)" in out
    assert "fixed herbs.fpn_size = 32 (given by --set: not searched)" in out
    assert "search herbs.num_selects: one of" in out and "search optim.lr" not in out
    assert "trial 0 is the starting recipe as given" in out and "herbs_demo_cpu" in out
    assert not any(tmp_path.iterdir())


def test_tune_needs_trials_or_a_budget_and_a_valid_budget() -> None:
    result = runner.invoke(app, ["tune", "--method", "baseline", "--data", "demo", "--dry-run"])
    assert result.exit_code == 1 and "needs --trials N or --budget" in result.output
    result = runner.invoke(app, ["tune", "--method", "baseline", "--data", "demo", "--budget", "2 days"])
    assert result.exit_code == 1 and "--budget '2 days' is not a duration" in result.output
    from fgcli.tuning.run import parse_duration

    assert parse_duration("1h30m") == 5400 and parse_duration("90m") == 5400 and parse_duration(45) == 45


def test_no_validation_split_is_refused_naming_val_fraction(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tune", "--method", "baseline", "--data", "demo", "--trials", "2",
                                 "--set", "data.val_fraction=0", "--set", "data.demo_per_class=4",
                                 "--set", "data.demo_classes=2", "--set", "data.demo_size=32",
                                 "--project", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "has no 'val' split to score trials on" in result.output and "--val-fraction" in result.output


def test_an_unequal_comparison_is_refused_before_any_trial(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")  # train.epochs not searched
    result = runner.invoke(app, ["tune", "--recipes", "baseline_lite0_128,mge_frozen_lite0_128", "--data", "demo",
                                 "--trials", "4", "--space", str(space), "--dry-run", "--project", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "different maximum epochs (baseline_lite0_128 12, mge_frozen_lite0_128 6)" in result.output
    ok = runner.invoke(app, ["tune", "--methods", "baseline,mge", "--data", "demo", "--trials", "4", "--dry-run",
                             "--project", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert "2 arms x 4 trials, pruner median, at most 12 epochs a trial" in ok.output
    assert ok.output.count("search train.epochs: 3 .. 12") == 2  # the same maximum for both demo recipes
    budget = runner.invoke(app, ["tune", "--methods", "baseline,mge", "--data", "demo", "--trials", "4",
                                 "--budget", "1h", "--dry-run"])
    assert budget.exit_code == 1 and "drop --budget" in budget.output
