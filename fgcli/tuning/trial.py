"""One trial: the starting config with the trial's values, trained as an ordinary run in its own folder
(args.yaml, results.csv, weights/) and scored by its best val top-1. Each epoch's val top-1 goes to the
pruner, which may stop the run there; a trial queued again after a kill continues from its own last.pt."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgcli.config import Config, flatten, from_dict, to_dict
from fgcli.console import log
from fgcli.errors import UserError
from fgcli.tuning.space import Space, apply
from fgcli.tuning.storage import origin_of

#: config keys that say where and how a run is kept, not what it trains: left out of recipes
RUN_KEYS = ("train.project", "train.name", "train.exist_ok", "train.quiet", "train.device", "data.workers")


@dataclass
class TrialSetup:
    """What every trial of a study shares."""

    base: Config  # the starting config (recipe < --config < flags < --set)
    space: Space
    trials_dir: Path
    explicit: frozenset[str]  # keys set by flag / --set (never adjusted to fit a short run)
    pruner: str  # its name, for the log
    on_epoch: Callable[[int, int, int, float], None] | None = None  # (trial, epoch, epochs, val top-1)


def trial_folder(setup: TrialSetup, frozen: Any) -> tuple[Path, int]:
    """The run folder of a trial and the number it is shown under: a trial queued again after a kill keeps
    the folder (and number) of the trial it continues."""
    number = origin_of(frozen)
    return setup.trials_dir / f"trial_{number:03d}", number


def run_trial(setup: TrialSetup, trial: Any, frozen: Any) -> float:
    """Train one trial; its best val top-1, or optuna.TrialPruned when the pruner stopped it."""
    import optuna

    from fgcli.engine.checkpoint import load_checkpoint
    from fgcli.engine.trainer import train

    run_dir, number = trial_folder(setup, frozen)
    values = {dim.key: dim.suggest(trial) for dim in setup.space.dims}
    cfg = apply(setup.base, values, source=f"trial #{trial.number}")
    resume = None
    last = run_dir / "weights" / "last.pt"
    if number != frozen.number and last.is_file():
        resume = load_checkpoint(last)
        cfg = from_dict(resume["config"], source=f"{last} (its config)")  # the run continues exactly
        # ... on this machine's device, loader workers and data path (what a resume may change)
        cfg.train.device, cfg.data.workers = setup.base.train.device, setup.base.data.workers
        cfg.data.path = setup.base.data.path
        log.info(f"trial #{trial.number} continues trial #{number} from {last} (epoch {resume['epoch']})")
    elif run_dir.exists() and number == frozen.number:
        _move_aside(run_dir)
    cfg.train.project, cfg.train.name, cfg.train.exist_ok, cfg.train.quiet = str(setup.trials_dir), run_dir.name, \
        True, True
    trial.set_user_attr("fgcli_run_dir", str(run_dir.resolve()))
    trial.set_user_attr("fgcli_worker", f"{socket.gethostname()}:{os.getpid()}")
    report = Reporter(setup, trial, number, cfg.train.epochs)
    if resume is not None and report.replay(resume.get("history") or []):
        _record(trial, resume.get("history") or [], cfg)
        raise optuna.TrialPruned(report.reason)
    t0 = time.perf_counter()
    result = train(cfg, resume=resume, run_dir=run_dir, explicit=setup.explicit if resume is None else frozenset(),
                   on_epoch_end=report)
    _record(trial, result.history, result.config or cfg, wall=time.perf_counter() - t0)
    if result.stopped is not None:
        raise optuna.TrialPruned(result.stopped)
    if result.best_metric is None:
        raise UserError(f"trial #{number} has no val top-1 (no validation split?)")
    return float(result.best_metric)


class Reporter:
    """The trainer's on_epoch_end: report each epoch's val top-1 and ask the pruner whether to go on."""

    def __init__(self, setup: TrialSetup, trial: Any, number: int, epochs: int) -> None:
        self.setup, self.trial, self.number, self.epochs = setup, trial, number, epochs
        self.reason: str | None = None

    def __call__(self, epoch: int, row: dict[str, Any]) -> str | None:
        value = row.get("val/top1")
        if value is None:
            return None
        self.trial.report(float(value), epoch)
        if self.setup.on_epoch is not None:
            self.setup.on_epoch(self.number, epoch, self.epochs, float(value))
        if self.trial.should_prune():
            self.reason = f"pruned by the {self.setup.pruner} pruner at val top-1 {value:.2f} %"
            return self.reason
        return None

    def replay(self, history: list[dict[str, Any]]) -> bool:
        """Report the epochs a resumed trial already has; True when the pruner stops it at the last of them."""
        stop = None
        for row in history:
            stop = self(int(row["epoch"]), row) if "val/top1" in row else None
        return stop is not None and bool(history) and int(history[-1]["epoch"]) < self.epochs


def _record(trial: Any, history: list[dict[str, Any]], cfg: Config, wall: float | None = None) -> None:
    """Keep what the trial ran in the storage (other machines read it there): epochs, time, its recipe."""
    if history:
        trial.set_user_attr("fgcli_epochs", int(history[-1]["epoch"]))
        trial.set_user_attr("fgcli_time_s", round(float(history[-1]["time"]), 1))
        best = max(history, key=lambda r: float(r.get("val/top1", float("-inf"))))
        trial.set_user_attr("fgcli_best_epoch", int(best["epoch"]))
    if wall is not None:
        trial.set_user_attr("fgcli_wall_s", round(wall, 1))
    trial.set_user_attr("fgcli_recipe", recipe_dict(cfg))


def recipe_dict(cfg: Config) -> dict[str, Any]:
    """The config as a recipe: the keys that differ from the built-in defaults, without where the run went."""
    ours = flatten(to_dict(cfg))
    defaults = flatten(to_dict(Config()))
    keep = {k: v for k, v in ours.items() if (v != defaults.get(k) or k == "method") and k not in RUN_KEYS
            and not k.startswith("log.")}
    nested: dict[str, Any] = {}
    for key, value in keep.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _move_aside(run_dir: Path) -> None:
    """A folder left by another study under this trial's name is kept, renamed, never trained over."""
    target = run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}-{os.getpid()}")
    run_dir.rename(target)
    log.warning(f"{run_dir} was left by an earlier study; moved to {target}")
