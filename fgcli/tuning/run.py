"""`fgcli tune`: plan a study (starting config, search space, storage), run this worker's share of its
trials, and report the study (table rows, trials.csv, best recipe, plots)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.config import Config, flatten, resolve_config
from fgcli.console import add_file_log, log, progress_bar
from fgcli.errors import UserError, unknown_choice
from fgcli.tuning.report import (
    TrialRow,
    best_trial,
    trial_rows,
    write_best_recipe,
    write_plots,
    write_trials_csv,
)
from fgcli.tuning.space import Space, encode, load_space_file, resolve, yaml_scalar
from fgcli.tuning.storage import StudySpec, default_url, open_storage, open_study, origin_of, redact

PRUNERS = ("median", "halving", "none")
DEFAULT_HEARTBEAT = 10  # seconds between a running trial's heartbeats
FIRST_PRUNED_EPOCH = 2  # no trial is pruned on its first epoch (warm-up, noisy val)


#: TPE draws at random until this many trials have finished (trial 0, the recipe, among them): Optuna's default
STARTUP_TRIALS = 10

@dataclass
class StudyPlan:
    """Everything a study needs before its first trial, and the lines that say it."""

    study: str
    arm: str  # the recipe (or method) it starts from, as shown
    method: str
    recipe: str | None
    base: Config
    space: Space
    tune_dir: Path
    storage_url: str
    trials: int | None
    budget_s: float | None
    pruner: Any  # a name of PRUNERS, or an Optuna pruner object (Python API)
    heartbeat: int
    explicit: frozenset[str]
    data_line: str
    startup_trials: int

    @property
    def max_epochs(self) -> int:
        dim = next((d for d in self.space.dims if d.key == "train.epochs"), None)
        return int(dim.high) if dim is not None else self.base.train.epochs

    def lines(self) -> list[str]:
        amount = " and ".join(x for x in (f"{self.trials} trials" if self.trials else "",
                                           f"a budget of {format_duration(self.budget_s)}" if self.budget_s else "")
                              if x)
        out = [f"study '{self.study}' ({self.method}, from {self.recipe or 'the built-in defaults'}): {amount}, "
               f"pruner {pruner_line(self.pruner, self.trials)}, at most {self.max_epochs} epochs a trial",
               f"  sampler: Optuna's TPE, seeded by --seed {self.base.train.seed}; it draws at random until "
               f"{self.startup_trials} trials have finished, trial 0 among them (--startup-trials)",
               f"  data: {self.data_line}; trials are scored on val top-1, the test split is not read",
               f"  storage: {redact(self.storage_url)}; folder: {self.tune_dir}"]
        for dim in self.space.dims:
            note = f" ({self.space.widened[dim.key]})" if dim.key in self.space.widened else ""
            out.append(f"  search {dim.key}: {dim.describe()}{note}")
        for key, flag in self.space.fixed.items():
            out.append(f"  fixed {key} = {yaml_scalar(_get(self.base, key))} (given by {flag}: not searched)")
        for key, why in self.space.skipped.items():
            out.append(f"  not searched {key}: {why}")
        start = ", ".join(f"{k}={yaml_scalar(v)}" for k, v in self.space.start.items()) or "no searched keys"
        out.append(f"  trial 0 is the starting recipe as given: {start}")
        return out


@dataclass
class TuneResult:
    """A study after this worker's share: its trials, the best one, and the files written."""

    study: str
    storage: str  # the URL, without its password
    tune_dir: Path
    method: str
    plan: list[str]
    keys: list[str] = field(default_factory=list)  # the searched config keys
    rows: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    files: dict[str, Path] = field(default_factory=dict)
    ran_here: int = 0  # trials this process ran
    dry_run: bool = False

    def count(self, state: str) -> int:
        return sum(1 for r in self.rows if r.state == state)


# -- inputs ------------------------------------------------------------------------------------------------
def parse_duration(value: str | float | int | None) -> float | None:
    """'2h', '90m', '1h30m', '45s' or a number of seconds -> seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise UserError(f"--budget '{value}' is not a duration; give e.g. 2h, 90m, 1h30m or 3600 (seconds).")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UserError(f"--budget must be positive, got {value!r}.")
    return seconds


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def make_pruner(name: Any, trials: int | None) -> Any:
    """Optuna's median or successive-halving pruner on per-epoch val top-1 (or none); an Optuna pruner object
    is used as it is."""
    import optuna

    if not isinstance(name, str):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=_startup(trials), n_warmup_steps=FIRST_PRUNED_EPOCH)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=FIRST_PRUNED_EPOCH, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise unknown_choice("--pruner", name, PRUNERS)


def pruner_name(pruner: Any) -> str:
    if not isinstance(pruner, str):
        return type(pruner).__name__
    return {"halving": "successive-halving"}.get(pruner, pruner)


def pruner_line(name: Any, trials: int | None) -> str:
    if not isinstance(name, str):
        return type(name).__name__
    if name == "median":
        return (f"median (a trial below the median of earlier trials at the same epoch stops, from epoch "
                f"{FIRST_PRUNED_EPOCH}, once {_startup(trials)} trials finished)")
    if name == "halving":
        return f"successive halving (rungs at epochs {FIRST_PRUNED_EPOCH}, {3 * FIRST_PRUNED_EPOCH}, ...; 1/3 go on)"
    return "none (every trial trains all its epochs)"


def _startup(trials: int | None) -> int:
    return 5 if trials is None else min(5, max(2, trials // 4))


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


# -- planning ----------------------------------------------------------------------------------------------
def starting_recipe(method: str | None, recipe: str | None, config_file: str | None, flags: dict[str, Any],
                    overrides: list[str] | None = None) -> str | None:
    """The recipe a study starts from: the one given; else, as `fgcli train` does, the method's shipped recipe
    (on the demo data: its demo recipe) unless --backbone asks for another backbone (the shipped recipes carry
    their backbone's weights); else none (the built-in defaults)."""
    from fgcli.config import flatten, parse_overrides

    if recipe is not None or config_file is not None:
        return recipe
    if method is None:
        raise UserError("fgcli tune needs --method (or --recipe / --config) to know what to search.")
    if "model.backbone" in flags or "model.backbone" in flatten(parse_overrides(overrides)):
        return None
    from fgcli.engine.runconfig import demo_recipe
    from fgcli.methods import get_method

    if (flags.get("data.path") or Config().data.path) == "demo":
        return demo_recipe(method).stem  # checks it is installed; by name, as the plan shows it
    return get_method(method).tune_recipe


def check_data(cfg: Config, need_test: bool = False) -> str:
    """Refuse data without a validation split (or, for a comparison, without a test split); a summary line."""
    from fgcli.data.prepare import resolve_data

    if cfg.data.val_split == "test":
        raise UserError("data.val_split=test would choose trials on the test split; score them on 'val'.")
    dataset = resolve_data(cfg.data)
    val = dataset.splits.get(cfg.data.val_split) or []
    if not val:
        raise UserError(f"--data {cfg.data.path} has no '{cfg.data.val_split}' split to score trials on (a search "
                        "never looks at test): give it one with --val-fraction 0.1 (fgcli prepare-data), or "
                        "--set data.val_fraction=0.1 for a raw source or the demo.")
    test = dataset.splits.get("test") or []
    if need_test and not test:
        raise UserError(f"--data {cfg.data.path} has no test split to confirm the comparison on; prepare it with "
                        "one (fgcli prepare-data ... --test-fraction 0.2).")
    return (f"{dataset.name} ({len(dataset.classes)} classes, {len(dataset.splits.get('train') or [])} train / "
            f"{len(val)} {cfg.data.val_split} images)")


def plan_study(*, method: str | None, recipe: str | None, config_file: str | None, flags: dict[str, Any],
               overrides: list[str] | None, fixed_by: dict[str, str], explicit: frozenset[str],
               trials: int | None, budget_s: float | None, space_file: str | None, storage: str | None,
               study: str | None, pruner: Any, max_epochs: int | None, heartbeat: int, project: str | None,
               name: str | None, startup_trials: int, arm: str | None = None,
               need_test: bool = False) -> StudyPlan:
    """Resolve everything a study needs and check it; nothing is written."""
    from fgcli.methods import get_method

    if trials is None and budget_s is None:
        raise UserError("fgcli tune needs --trials N or --budget DURATION (or both).")
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise unknown_choice("--pruner", pruner, PRUNERS)
    if heartbeat < 1:
        raise UserError(f"--heartbeat must be >= 1 second, got {heartbeat}.")
    if startup_trials < 1:
        raise UserError(f"--startup-trials must be >= 1 (trial 0, the recipe, is always one), got {startup_trials}.")
    recipe = starting_recipe(method, recipe, config_file, flags, overrides)
    base = resolve_config(recipe, config_file, flags, overrides)
    method_cls = get_method(base.method)
    declared = load_space_file(space_file) if space_file else list(method_cls.search_space)
    if not declared:
        raise UserError(f"fgcli tune: method '{base.method}' has no search space (the probe chooses its L2 weight on "
                        "val itself, from probe.l2_grid). Train it with `fgcli train`, or give --space FILE.")
    source = f"--space {space_file}" if space_file else f"the default search space of {base.method}"
    space = resolve(declared, base, source=source, fixed_by=fixed_by, epochs_high=max_epochs,
                    defaults={"optim.backbone_lr_scale": method_cls.default_backbone_lr_scale})
    data_line = check_data(base, need_test=need_test)  # after the cheap checks: it may prepare raw data
    arm = arm or (Path(recipe).stem if recipe else base.method)
    data_name = slug(Path(str(base.data.path)).name or "data")
    study = study or slug(f"{arm}-{data_name}")
    tune_dir = Path(project or "runs/tune") / (name or study)
    return StudyPlan(study=study, arm=arm, method=base.method, recipe=recipe, base=base, space=space,
                     tune_dir=tune_dir, storage_url=storage or default_url(tune_dir), trials=trials,
                     budget_s=budget_s, pruner=pruner, heartbeat=heartbeat, explicit=explicit, data_line=data_line,
                     startup_trials=startup_trials)


# -- running -----------------------------------------------------------------------------------------------
def run_study(plan: StudyPlan) -> TuneResult:
    """Create or resume the study, run trials here until it (or the budget) is done, then report it."""
    import optuna

    from fgcli.data.locking import folder_lock
    from fgcli.tuning.trial import TrialSetup, run_trial
    from fgcli.tuning.worker import work

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    own_file = plan.storage_url == default_url(plan.tune_dir)
    storage = None if own_file else open_storage(plan.storage_url, plan.heartbeat)  # refused before any write
    plan.tune_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(plan.tune_dir):  # workers on this machine create the tables one at a time
        _claim_folder(plan)
        handler = add_file_log(plan.tune_dir / "log.txt")
        try:
            for line in plan.lines():
                log.info(line)
            storage = storage or open_storage(plan.storage_url, plan.heartbeat)
        except BaseException:
            _close(handler)
            raise
    try:
        spec = StudySpec(plan.study, plan.method, plan.space.as_list(),
                         {k: encode(v) for k, v in plan.space.start.items()}, plan.trials, fixed=fixed_settings(plan))
        seed = int(plan.base.train.seed)
        study = open_study(storage, spec, seeded_sampler(seed, 0, plan.startup_trials),
                           make_pruner(plan.pruner, plan.trials),
                           plan.tune_dir)
        deadline = time.monotonic() + plan.budget_s if plan.budget_s else None
        with _TrialBar(study, plan.trials) as bar:
            setup = TrialSetup(base=plan.base, space=plan.space, trials_dir=plan.tune_dir / "trials",
                               explicit=plan.explicit, pruner=pruner_name(plan.pruner), on_epoch=bar.epoch)

            def run(trial: Any, frozen: Any) -> float:
                try:
                    return run_trial(setup, trial, frozen)
                finally:
                    bar.trial_done()

            ran = work(study, storage, run, slots=plan.trials is not None, deadline=deadline,
                       heartbeat=plan.heartbeat,
                       sampler_for=lambda number: seeded_sampler(seed, number, plan.startup_trials))
        result = report(study, plan)
        result.ran_here = ran
        return result
    finally:
        _close(handler)


def seeded_sampler(seed: int, number: int, startup_trials: int) -> Any:
    """Optuna's TPE sampler for trial `number`, seeded from the run's --seed and that number: on one worker the
    same command draws the same trials, also after a resume (TPE's values depend on the finished trials, which
    a fixed seed makes repeatable on one machine). It draws at random until `startup_trials` trials have finished
    (trial 0, the recipe, among them)."""
    import optuna

    return optuna.samplers.TPESampler(seed=(seed * 100_003 + number) % 2**32,
                                      n_startup_trials=startup_trials)


def fixed_settings(plan: StudyPlan) -> dict[str, Any]:
    """The starting config's keys a study keeps fixed, flat, without what may differ between the machines of
    one study (data path, device, loader workers, where runs go)."""
    import json

    from fgcli.tuning.trial import recipe_dict

    flat = flatten(recipe_dict(plan.base))
    flat.pop("data.path", None)
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in plan.space.keys()}))


def _close(handler: Any) -> None:
    log.removeHandler(handler)
    handler.close()


def _claim_folder(plan: StudyPlan) -> None:
    """One study per tune folder: its trial folders are numbered by the study's trials."""
    import yaml

    marker = plan.tune_dir / "tune.yaml"
    if not marker.is_file():
        from fgcli.io import atomic_write_text

        atomic_write_text(marker, f"study: {plan.study}\nstorage: {redact(plan.storage_url)}\nmethod: {plan.method}\n")
        return
    try:
        held = (yaml.safe_load(marker.read_text(encoding="utf-8")) or {}).get("study")
    except (OSError, yaml.YAMLError, AttributeError):
        held = None
    if held is not None and str(held) != plan.study:
        raise UserError(f"{plan.tune_dir} holds study '{held}'; pass --name (another folder) for study "
                        f"'{plan.study}', or --study {held} to resume that one.")


def report(study: Any, plan: StudyPlan) -> TuneResult:
    """The rows, trials.csv, the best recipe and the plots of the study as it is now."""
    rows = trial_rows(study)
    keys = plan.space.keys()
    files = {"trials": plan.tune_dir / "trials.csv"}
    write_trials_csv(rows, keys, files["trials"])
    best = best_trial(study)
    header = [f"fgcli tune: the best trial of study '{plan.study}' ({plan.method}, from "
              f"{plan.recipe or 'the built-in defaults'}), {len(rows)} trials on {plan.data_line}"]
    recipe_path = plan.tune_dir / "best_recipe.yaml"
    if write_best_recipe(study, recipe_path, header):
        files["best_recipe"] = recipe_path
    files.update(write_plots(study, plan.tune_dir))
    best_row = None
    if best is not None:
        best_row = next((r for r in rows if r.number == origin_of(best)), None)
    return TuneResult(study=plan.study, storage=redact(plan.storage_url), tune_dir=plan.tune_dir, method=plan.method,
                      plan=plan.lines(), keys=keys, rows=rows, best=best_row, files=files)


class _TrialBar:
    """A progress bar over the study's trials, showing the running trial's epoch and the best so far."""

    def __init__(self, study: Any, trials: int | None) -> None:
        self.study, self.total = study, trials
        self.bar = progress_bar(info=True)
        self.task: Any = None
        self.best: float | None = None
        self.stale = True

    def __enter__(self) -> _TrialBar:
        self.bar.__enter__()
        done = sum(1 for r in trial_rows(self.study) if r.state in ("complete", "pruned"))
        self.task = self.bar.add_task("trials", total=self.total, completed=done, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def epoch(self, number: int, epoch: int, epochs: int, top1: float) -> None:
        if self.stale:
            found = best_trial(self.study)
            self.best, self.stale = (found.value if found is not None else None), False
        best = f" | best so far {self.best:.2f} %" if self.best is not None else ""
        self.bar.update(self.task, info=f"trial #{number}: epoch {epoch}/{epochs}, val top-1 {top1:.2f} %{best}")

    def trial_done(self) -> None:
        self.stale = True  # the trial is told after this: read the best again at the next epoch
        self.bar.advance(self.task)

