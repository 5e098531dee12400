"""model.freeze and optim.backbone_lr_scale on every method: groups, frozen weights and BN statistics."""

from __future__ import annotations

import pytest
import torch

from fgcli.config import from_dict, resolve_config
from fgcli.engine.optim import build_optimizer
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
    with pytest.raises(UserError, match="optim.backbone_lr_scale must be >= 0"):
        resolve_config(None, None, None, ["optim.backbone_lr_scale=-1"])


def test_old_mge_backbone_lr_scale_key_still_loads() -> None:
    """Checkpoints and recipes written before the key moved to optim keep loading, with the same value."""
    cfg = from_dict({"method": "mge", "mge": {"backbone_lr_scale": 0.3, "experts": 2}})
    assert cfg.optim.backbone_lr_scale == 0.3 and cfg.mge.experts == 2
    cfg = from_dict({"mge": {"backbone_lr_scale": 0.3}, "optim": {"backbone_lr_scale": 0.5}})
    assert cfg.optim.backbone_lr_scale == 0.5
