"""Optimizer and learning-rate schedule from the config, via timm's factories.

The method's `param_groups(cfg)` decide per-part learning rates (`lr_scale` multiplies the base lr, applied
by timm's schedulers on every update); each group is split into decay / no-decay parts (biases, norms and
other 1-d parameters get no weight decay). The schedule advances once per optimizer update, so warm-up can be
given in epochs or in steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fgcli.config import Config
from fgcli.errors import UserError


def split_weight_decay(model: nn.Module, groups: list[dict[str, Any]], weight_decay: float,
                       decay_all: bool = False) -> list[dict[str, Any]]:
    """Split each param group into a decayed part and a no-decay part (1-d params, biases, no_weight_decay());
    with `decay_all` every parameter is decayed (the official HERBS / MGE-CNN optimizers)."""
    names = {id(p): n for n, p in model.named_parameters()}
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    out: list[dict[str, Any]] = []
    for group in groups:
        extra = {k: v for k, v in group.items() if k != "params"}
        decay, no_decay = [], []
        for p in group["params"]:
            if not p.requires_grad:
                continue
            name = names.get(id(p), "")
            if not decay_all and (p.ndim <= 1 or name.endswith(".bias") or name in skip):
                no_decay.append(p)
            else:
                decay.append(p)
        wd = extra.pop("weight_decay", weight_decay)
        if decay:
            out.append({"params": decay, "weight_decay": wd, **extra})
        if no_decay:
            out.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return out


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """timm.optim.create_optimizer_v2 over the method's parameter groups."""
    from timm.optim import create_optimizer_v2

    groups = model.param_groups(cfg) if hasattr(model, "param_groups") else [{"params": list(model.parameters())}]
    groups = split_weight_decay(model, groups, cfg.optim.weight_decay, cfg.optim.decay_all)
    if not groups:
        raise UserError("the model has no trainable parameters; check the method / backbone settings.")
    seen: set[int] = set()
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise UserError(f"method '{cfg.method}' lists a parameter in two param_groups; fix its "
                                "param_groups().")
            seen.add(id(p))
    kwargs: dict[str, Any] = {}
    name = cfg.optim.name.lower()
    if name.split("_")[-1] in ("sgd", "momentum", "nesterov"):
        kwargs["nesterov"] = cfg.optim.nesterov
    try:
        return create_optimizer_v2(groups, opt=name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                   momentum=cfg.optim.momentum, **kwargs)
    except (ValueError, AssertionError) as e:
        from timm.optim import list_optimizers

        if "optimizer" in str(e).lower() or "unknown" in str(e).lower() or "invalid" in str(e).lower():
            from fgcli.errors import unknown_choice

            raise unknown_choice("optimizer (optim.name)", cfg.optim.name, list_optimizers()) from e
        raise


#: a warm-up from a recipe or the defaults that would cover a short run is cut to this share of the run
WARMUP_SHARE = 0.2


def warmup_updates(cfg: Config, updates_per_epoch: int) -> int:
    """The warm-up length in optimizer updates."""
    s = cfg.sched
    warmup = s.warmup * updates_per_epoch if s.warmup_unit == "epochs" else s.warmup
    return int(math.ceil(round(warmup, 6)))


def fit_warmup(cfg: Config, updates_per_epoch: int, explicit: bool = False) -> str | None:
    """Fit a warm-up that would cover the whole run (a recipe's 1 epoch under `--epochs 1`) to WARMUP_SHARE of
    it, in `cfg` itself, and say so; None when it already fits. A warm-up the user gave explicitly
    (`explicit`: a flag or `--set`) is left alone: `build_scheduler` then refuses it."""
    total = max(1, cfg.train.epochs * updates_per_epoch)
    s = cfg.sched
    if explicit or s.name == "none" or warmup_updates(cfg, updates_per_epoch) < total:
        return None
    old = f"{s.warmup:g} {s.warmup_unit}"
    steps = int(total * WARMUP_SHARE)
    s.warmup = round(steps / updates_per_epoch, 4) if s.warmup_unit == "epochs" else float(steps)
    return (f"sched.warmup ({old}) would cover the whole run of {total} updates; shortened to {s.warmup:g} "
            f"{s.warmup_unit} ({steps} updates, {WARMUP_SHARE:.0%} of the run). Choose it with --set sched.warmup=N.")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, updates_per_epoch: int) -> Any:
    """A timm scheduler stepped per optimizer update (`step_update(num_updates)`)."""
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    total = max(1, cfg.train.epochs * updates_per_epoch)
    s = cfg.sched
    warmup = warmup_updates(cfg, updates_per_epoch)
    if warmup >= total and s.name != "none":
        raise UserError(f"sched.warmup ({s.warmup:g} {s.warmup_unit}) covers the whole run of {total} updates; "
                        "lower the warm-up or train longer.")
    common = {"warmup_t": warmup, "warmup_lr_init": s.warmup_lr, "t_in_epochs": False}
    if s.name == "cosine":
        if s.cosine_period == "whole_run":
            # HERBS' official schedule (utils/lr_schedule.py `cosine_decay`): after the warm-up, a cosine over
            # t - warmup whose period is the whole run, so it starts at the top and ends at ~0.0015 x max.
            return CosineLRScheduler(optimizer, t_initial=total, lr_min=s.min_lr, warmup_prefix=True, **common)
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=s.min_lr,
                                 warmup_prefix=True, **common)
    if s.name == "step":
        return StepLRScheduler(optimizer, decay_t=max(1, s.step_size * updates_per_epoch), decay_rate=s.gamma,
                               warmup_prefix=True, **common)
    # "none": constant lr after an optional warm-up
    return StepLRScheduler(optimizer, decay_t=total + warmup + 1, decay_rate=1.0, warmup_prefix=True, **common)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base lr (the first group without lr_scale, else the first group's lr / lr_scale)."""
    for g in optimizer.param_groups:
        if "lr_scale" not in g or g["lr_scale"] == 1.0:
            return float(g["lr"])
    g = optimizer.param_groups[0]
    return float(g["lr"]) / float(g.get("lr_scale", 1.0) or 1.0)
