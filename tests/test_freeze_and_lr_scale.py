"""model.freeze, model.freeze_epochs and optim.backbone_lr_scale on every method: groups, frozen weights and BN
statistics, and the head-first schedule through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fgcli.config import from_dict, resolve_config
from fgcli.engine.optim import build_optimizer
from fgcli.engine.rundir import read_results_csv
from fgcli.errors import UserError
from fgcli.methods import build_method

TINY = {
    "baseline": [],
    "herbs": ["herbs.fpn_size=8", "herbs.num_selects=[0.25,0.25,0.25,0.25]"],
    "mge": ["mge.part_mult=2", "mge.gate_hidden=8"],
}


def _model(method: str, *sets: str):
    cfg = resolve_config(None, None, {"method": method, "model.backbone": "test_resnet", "data.img_size": 64},
                         [*TINY[method], *sets])
    return cfg, build_method(cfg, 5)


def _trunk_ids(model) -> set[int]:
    return {id(p) for trunk in model.backbones() for p in trunk.parameters()}


@pytest.mark.parametrize("method,default_scale", [("baseline", 1.0), ("herbs", 1.0), ("mge", 0.1)])
def test_backbone_group_gets_the_scale_and_every_parameter_is_listed_once(method: str,
                                                                          default_scale: float) -> None:
    cfg, model = _model(method)
    assert model.backbones(), "the method's trunk was not found"
    groups = model.param_groups(cfg)
    assert [(g["name"], g["lr_scale"]) for g in groups] == [("backbone", default_scale), ("heads", 1.0)]
    assert {id(p) for p in groups[0]["params"]} == _trunk_ids(model)
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))

    cfg, model = _model(method, "optim.backbone_lr_scale=0.25")
    assert [g["lr_scale"] for g in model.param_groups(cfg)] == [0.25, 1.0]


@pytest.mark.parametrize("method", list(TINY))
def test_frozen_backbone_does_not_change_in_training(method: str) -> None:
    torch.manual_seed(0)
    cfg, model = _model(method, "model.freeze=backbone", "optim.name=sgd", "optim.lr=0.5")
    before = {k: v.clone() for trunk in model.backbones() for k, v in trunk.state_dict().items()}
    head_before = [p.clone() for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, cfg)
    assert [g.get("name") for g in optimizer.param_groups] == ["heads", "heads"]  # decay / no-decay parts
    model.train()
    assert all(not m.training for trunk in model.backbones() for m in trunk.modules())
    assert model.training
    images, targets = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        total, _ = model.loss(model(images, targets), targets, 0)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    after = {k: v for trunk in model.backbones() for k, v in trunk.state_dict().items()}
    for key, value in before.items():  # weights and BN running statistics alike
        assert torch.equal(value, after[key]), key
    moved = [p for p, b in zip((p for p in model.parameters() if p.requires_grad), head_before, strict=True)
             if not torch.equal(p, b)]
    assert moved, "the heads did not train"


def test_bad_freeze_value_and_scale_are_user_errors() -> None:
    with pytest.raises(UserError, match="model.freeze must be 'none' or 'backbone'"):
        resolve_config(None, None, None, ["model.freeze=all"])
    with pytest.raises(UserError, match=r"model.freeze_epochs must be >= 0 and below train.epochs.*\(got 3\)"):
        resolve_config(None, None, None, ["train.epochs=3", "model.freeze_epochs=3"])
    with pytest.raises(UserError, match="model.freeze_epochs needs model.freeze: none"):
        resolve_config(None, None, None, ["train.epochs=3", "model.freeze_epochs=1", "model.freeze=backbone"])
    with pytest.raises(UserError, match="optim.backbone_lr_scale must be >= 0"):
        resolve_config(None, None, None, ["optim.backbone_lr_scale=-1"])


def test_old_mge_backbone_lr_scale_key_still_loads() -> None:
    """Checkpoints and recipes written before the key moved to optim keep loading, with the same value."""
    cfg = from_dict({"method": "mge", "mge": {"backbone_lr_scale": 0.3, "experts": 2}})
    assert cfg.optim.backbone_lr_scale == 0.3 and cfg.mge.experts == 2
    cfg = from_dict({"mge": {"backbone_lr_scale": 0.3}, "optim": {"backbone_lr_scale": 0.5}})
    assert cfg.optim.backbone_lr_scale == 0.5


def test_unfreeze_restores_exactly_what_was_trainable() -> None:
    _, model = _model("baseline")
    trunk = model.backbones()[0]
    kept_fixed = next(iter(trunk.parameters()))
    kept_fixed.requires_grad_(False)  # fixed by the user before: must stay fixed
    trainable = [p.requires_grad for p in model.parameters()]
    model.train()
    model.freeze_backbones()
    assert model.backbones_frozen and not any(p.requires_grad for p in trunk.parameters())
    assert not trunk.training and model.training
    model.unfreeze_backbones()
    assert not model.backbones_frozen and trunk.training
    assert [p.requires_grad for p in model.parameters()] == trainable


@pytest.mark.parametrize("method", list(TINY))
def test_frozen_bn_statistics_keep_running_stats_while_weights_train(method: str) -> None:
    torch.manual_seed(0)
    cfg, model = _model(method, "model.freeze_bn_stats=true", "optim.name=sgd", "optim.lr=0.5")
    bns = [m for trunk in model.backbones() for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns, "test_resnet has batch norm"
    stats = [(m.running_mean.clone(), m.running_var.clone(), m.weight.clone()) for m in bns]
    optimizer = build_optimizer(model, cfg)
    model.train()
    assert model.training and all(m.training for trunk in model.backbones() for m in trunk.modules()
                                  if not isinstance(m, torch.nn.BatchNorm2d))
    images, targets = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    total, _ = model.loss(model(images, targets), targets, 0)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    for m, (mean, var, _) in zip(bns, stats, strict=True):
        assert not m.training and torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert any(not torch.equal(m.weight, w) for m, (_, _, w) in zip(bns, stats, strict=True)), "BN weights fixed"
    model.freeze_backbones()
    model.unfreeze_backbones()  # back from head-first epochs: the statistics stay fixed
    assert not any(m.training for m in bns)
    model.eval()
    model.train()
    assert not any(m.training for m in bns)


TINY_CLI = ["--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "6", "--lr", "0.01",
            "--device", "cpu", "--workers", "0", "--set", "data.demo_size=32", "--set", "data.demo_classes=3",
            "--set", "data.demo_per_class=6", "--set", "data.val_fraction=0.34", "--set", "sched.name=none",
            "--set", "optim.name=adamw",
            # fixed kernels: `auto` times its candidates at start-up, and on a loaded CPU two runs may pick different
            # layouts or precisions, whose rounding differs (seen: epoch-1 losses 17.02 vs 17.06 on an AVX2 EPYC)
            "--set", "model.channels_last=never", "--set", "train.amp=false"]


def _cli_train(tmp: Path, name: str, *args: str) -> Path:
    herbs = [item for s in TINY["herbs"] for item in ("--set", s)]
    cmd = [sys.executable, "-m", "fgcli", "--quiet", "train", "--method", "herbs", *TINY_CLI, *herbs, "--seed", "0",
           "--project", str(tmp), "--name", name, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / name


def _trunk(run: Path) -> dict[str, torch.Tensor]:
    weights = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in weights.items() if ".backbone." in f".{k}"}


def test_head_first_schedule_from_the_cli(tmp_path: Path) -> None:
    """`model.freeze_epochs=1`: epoch 1 is exactly a frozen-backbone epoch (same losses and val top-1 as a
    `model.freeze=backbone` run of the same seed, trunk untouched), and from epoch 2 the trunk trains."""
    frozen = _cli_train(tmp_path, "frozen", "--epochs", "1", "--set", "model.freeze=backbone")
    head_first = _cli_train(tmp_path, "head_first", "--epochs", "2", "--set", "model.freeze_epochs=1")
    timing = ("time", "epoch_time", "train_img_s", "lr")
    first = [{k: v for k, v in read_results_csv(run / "results.csv")[0].items() if k not in timing}
             for run in (frozen, head_first)]
    assert first[0] == first[1]
    fixed, trained = _trunk(frozen), _trunk(head_first)
    assert fixed, "no backbone keys in the checkpoint"
    assert any(not torch.equal(fixed[k], trained[k]) for k in fixed if fixed[k].is_floating_point())
    log = (head_first / "log.txt").read_text()
    assert "Epoch 2: the backbone trains from now on (model.freeze_epochs=1)" in log
