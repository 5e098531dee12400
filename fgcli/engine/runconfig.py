"""Resolving the config of `fgcli train`: a fresh run (with the built-in demo recipe) or a resumed one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgcli.config import (
    Config,
    _nest,
    flatten,
    from_dict,
    from_saved,
    parse_overrides,
    resolve_config,
    resolve_recipe,
    validate,
)
from fgcli.console import log
from fgcli.errors import UserError

# What may change when resuming: everything else must match the checkpoint or the run would not be exact.
RESUME_MUTABLE = {"train.epochs", "train.device", "train.quiet", "train.max_nonfinite", "data.workers", "data.path",
                  "log.loggers", "log.mlflow_uri", "log.mlflow_experiment", "model.compile", "model.channels_last",
                  "train.threads", "train.patience"}


def demo_recipe(method: str) -> Path:
    """`models/<method>_demo_cpu.yaml`, the small CPU recipe used for `--data demo`. Not finding it is an error
    (a broken install), never a silent fall-back to the full-size defaults."""
    try:
        return resolve_recipe(f"{method}_demo_cpu")
    except UserError as e:
        raise UserError(f"--data demo needs the demo recipe '{method}_demo_cpu', which is not installed ({e}). "
                        "Reinstall fgcli, or pass --recipe / --backbone to train without it.") from e


def train_config(recipe: str | None, config_file: str | None, flags: dict[str, Any],
                 overrides: list[str] | None) -> Config:
    """defaults < recipe < --config < flags < --set; with `--data demo` and no recipe, --config or --backbone,
    the method's small CPU demo recipe is used so that the demo trains in minutes."""
    flags = {k: v for k, v in flags.items() if v is not None}
    if recipe is None and config_file is None and "model.backbone" not in flags:
        probe = resolve_config(None, None, flags, overrides)
        if probe.data.path == "demo" and "model.backbone" not in flatten(parse_overrides(overrides)):
            found = demo_recipe(probe.method)
            log.info(f"--data demo: using the CPU demo recipe {found} (pass --recipe or --backbone to change)")
            recipe = str(found)
    cfg = resolve_config(recipe, config_file, flags, overrides, check=False)
    note = fit_freeze_epochs(cfg, explicit="model.freeze_epochs" in explicit_keys(flags, overrides))
    if note:
        log.info(note)
    validate(cfg)
    return cfg


#: head-first epochs from a recipe that would cover a short run are cut to this share of the run (as the warm-up)
FREEZE_SHARE = 0.2


def fit_freeze_epochs(cfg: Config, explicit: bool = False) -> str | None:
    """Cut a recipe's `model.freeze_epochs` that would keep the trunk frozen for the whole run (a recipe's 2
    head-first epochs under `--epochs 1`) to FREEZE_SHARE of the run, in `cfg` itself, and say so; None when it
    fits. One the user gave explicitly (a flag or `--set`) is left alone: validation then refuses it."""
    frozen, epochs = cfg.model.freeze_epochs, cfg.train.epochs
    if explicit or frozen <= 0 or epochs < 1 or frozen < epochs:
        return None
    cfg.model.freeze_epochs = int(epochs * FREEZE_SHARE)
    return (f"model.freeze_epochs ({frozen}) would keep the backbone frozen for the whole run of {epochs} epoch(s); "
            f"shortened to {cfg.model.freeze_epochs}. Choose it with --set model.freeze_epochs=N.")


def explicit_keys(flags: dict[str, Any], overrides: list[str] | None) -> frozenset[str]:
    """The dotted config keys the user set directly, by a flag or `--set`."""
    keys = set(flatten(_nest({k: v for k, v in flags.items() if v is not None})))
    return frozenset(keys | set(flatten(parse_overrides(overrides))))


def resume_config(saved: dict[str, Any], flags: dict[str, Any], overrides: list[str] | None) -> Config:
    """The checkpoint's config with only the safe keys (RESUME_MUTABLE) changed by flags / --set."""
    changes = flatten(_nest({k: v for k, v in flags.items() if v is not None}))
    changes.update(flatten(parse_overrides(overrides)))
    cfg = from_saved(saved)
    current = flatten(_to_flat_dict(cfg))
    bad = [k for k, v in changes.items() if k not in RESUME_MUTABLE and current.get(k, object()) != v]
    if bad:
        raise UserError(f"--resume continues a run exactly; {', '.join(sorted(bad))} cannot change. Allowed: "
                        f"{', '.join(sorted(RESUME_MUTABLE))}. Start a new run (without --resume) to change more.")
    cfg = from_dict(_nest({k: v for k, v in changes.items() if k in RESUME_MUTABLE}), cfg, source="flags")
    validate(cfg)
    return cfg


def _to_flat_dict(cfg: Config) -> dict[str, Any]:
    from fgcli.config import to_dict

    return to_dict(cfg)
