"""An equal-budget comparison (`fgcli tune --recipes a,b,c` / `--methods baseline,herbs,mge`).

Equal budget means: one study per arm, the same number of trials, the same pruner and the same maximum
epochs (a wall-clock budget is not offered here: a shared CPU swings it several-fold). Each arm's best recipe,
chosen on the validation split, is then trained with seeds the search did not use and evaluated once on the
test split. The best arm (highest val mean: picked on val, so the test split does not both pick and judge it)
is "shown" better only when its test min-max range over the seeds lies above every other arm's.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.config import from_dict, from_saved, resolve_config
from fgcli.console import log
from fgcli.errors import UserError
from fgcli.io import atomic_write_text
from fgcli.tuning.run import StudyPlan, TuneResult, plan_study, run_study, slug, starting_recipe
from fgcli.tuning.storage import default_url


@dataclass
class SeedRun:
    """One seed of an arm's best recipe: its run folder, best val top-1 and test top-1 of best.pt."""

    seed: int
    run_dir: Path
    val_top1: float
    test_top1: float


@dataclass
class ArmResult:
    arm: str
    tune: TuneResult
    seeds: list[SeedRun] = field(default_factory=list)
    recipe: str | None = None  # the recipe its study started from (None: the built-in defaults)

    def stats(self, which: str) -> tuple[float, float, float] | None:
        """(mean, min, max) of 'val' or 'test' top-1 over the seeds."""
        values = [s.val_top1 if which == "val" else s.test_top1 for s in self.seeds]
        return (statistics.fmean(values), min(values), max(values)) if values else None


@dataclass
class CompareResult:
    name: str
    folder: Path
    plan: list[str]
    arms: list[ArmResult] = field(default_factory=list)
    best: str | None = None  # the arm with the highest val mean
    shown: bool = False  # its test min-max range lies above every other arm's
    tested: bool = True  # every arm has the seeds for a min-max range (MIN_SEEDS)
    verdict: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    dry_run: bool = False


def compare(*, recipes: list[str], methods: list[str], seeds: int, dry_run: bool, config_file: str | None,
            flags: dict[str, Any], overrides: list[str] | None, fixed_by: dict[str, str], explicit: frozenset[str],
            trials: int | None, budget_s: float | None, space_file: str | None, storage: str | None, pruner: Any,
            max_epochs: int | None, heartbeat: int, project: str | None, name: str | None,
            startup_trials: int) -> CompareResult:
    """Plan every arm (refusing unequal budgets before any trial), search each, then confirm on test."""
    arms = [(Path(r).stem, None, r) for r in recipes] + [(m, m, None) for m in methods]
    if len(arms) < 2 or len({a[0] for a in arms}) != len(arms):
        raise UserError("a comparison needs two or more different arms (--recipes a,b or --methods baseline,herbs).")
    if trials is None or budget_s is not None:
        raise UserError("a comparison's budget is the same --trials N for every arm; drop --budget (a wall-clock "
                        "budget is not equal on a shared machine).")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}.")
    data = flags.get("data.path")
    if max_epochs is None and "train.epochs" not in fixed_by:
        starts = []
        for _, method, recipe in arms:
            arm_flags = {**flags, **({"method": method} if method else {})}
            start = starting_recipe(method, recipe, config_file, arm_flags, overrides)
            starts.append(resolve_config(start, config_file, arm_flags, overrides).train.epochs)
        max_epochs = 2 * max(starts)
    data_name = slug(Path(str(data or "demo")).name)
    name = name or slug(f"{'-vs-'.join(a[0] for a in arms)}-{data_name}")[:120]
    folder = Path(project or "runs/tune") / name
    storage = storage or default_url(folder)
    plans: list[StudyPlan] = []
    for arm, method, recipe in arms:
        arm_flags = {**flags, **({"method": method} if method else {})}
        plans.append(plan_study(method=method, recipe=recipe, config_file=config_file, flags=arm_flags,
                                overrides=overrides, fixed_by=fixed_by, explicit=explicit, trials=trials,
                                budget_s=None, space_file=space_file, storage=storage, study=f"{name}-{arm}",
                                pruner=pruner, max_epochs=max_epochs, heartbeat=heartbeat, project=str(folder),
                                name=arm, arm=arm, need_test=True, startup_trials=startup_trials))
    most = {p.arm: p.max_epochs for p in plans}
    if len(set(most.values())) > 1:
        shown = ", ".join(f"{a} {e}" for a, e in most.items())
        raise UserError(f"the arms would train for different maximum epochs ({shown}): not an equal budget. Search "
                        "train.epochs (the default space does; --max-epochs sets the maximum) or fix it with --epochs.")
    lines = [f"comparison '{name}': {len(plans)} arms x {trials} trials, pruner {pruner}, at most "
             f"{plans[0].max_epochs} epochs a trial; then each arm's best recipe x {seeds} seeds on test"]
    for p in plans:
        lines += p.lines()
    result = CompareResult(name=name, folder=folder, plan=lines, dry_run=dry_run)
    if dry_run:
        return result
    log.info(lines[0])
    folder.mkdir(parents=True, exist_ok=True)  # the arms' shared study file lives here by default
    result.arms = [ArmResult(p.arm, run_study(p), recipe=p.recipe) for p in plans]
    for plan, arm in zip(plans, result.arms, strict=True):
        arm.seeds = confirm(plan, arm.tune, seeds)
    _verdict(result)
    result.files = write_tables(result, folder)
    return result


def confirm(plan: StudyPlan, tuned: TuneResult, seeds: int) -> list[SeedRun]:
    """Train the arm's best recipe with `seeds` new seeds (the search's seed + 1, + 2, ...) and evaluate each
    best.pt once on the test split; finished runs and evaluations are reused when the command runs again."""
    import yaml

    recipe = tuned.files.get("best_recipe")
    if recipe is None:
        log.warning(f"arm {plan.arm}: no trial completed, nothing to confirm on test")
        return []
    recipe_cfg = from_dict(yaml.safe_load(recipe.read_text(encoding="utf-8")), source=str(recipe))
    runs = []
    for seed in range(plan.base.train.seed + 1, plan.base.train.seed + 1 + seeds):
        run_dir = plan.tune_dir / "seeds" / f"seed_{seed}"
        val = _train_seed(recipe_cfg, plan, seed, run_dir)
        runs.append(SeedRun(seed, run_dir, val, _test_top1(run_dir)))
        log.info(f"arm {plan.arm}, seed {seed}: val top-1 {val:.2f} %, test top-1 {runs[-1].test_top1:.2f} %")
    return runs


def _train_seed(recipe_cfg: Any, plan: StudyPlan, seed: int, run_dir: Path) -> float:
    from fgcli.config import to_dict
    from fgcli.engine.checkpoint import load_checkpoint
    from fgcli.engine.rundir import end_of_run_done, epochs_left
    from fgcli.engine.trainer import train

    last, best = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"
    if last.is_file():
        ckpt = load_checkpoint(last)
        if not epochs_left(ckpt) and end_of_run_done(ckpt, best):
            return float(load_checkpoint(best)["best_metric"])
        cfg = from_saved(ckpt["config"], source=str(last))
        result = train(cfg, resume=ckpt, run_dir=run_dir)
    else:
        cfg = from_dict(to_dict(recipe_cfg), source="best recipe")
        cfg.train.seed = seed
        cfg.train.device, cfg.data.workers = plan.base.train.device, plan.base.data.workers
        cfg.train.project, cfg.train.name, cfg.train.exist_ok = str(run_dir.parent), run_dir.name, True
        result = train(cfg, run_dir=run_dir)
    if result.best_metric is None:
        raise UserError(f"{run_dir}: no val top-1 was recorded.")
    return float(result.best_metric)


def _test_top1(run_dir: Path) -> float:
    """best.pt's fused top-1 on the test split (evaluated once; the report is kept in <run>/test)."""
    from fgcli.options import EvalOptions
    from fgcli.tasks.eval_report import eval_model

    metrics = run_dir / "test" / "metrics.json"
    if metrics.is_file():
        return float(json.loads(metrics.read_text(encoding="utf-8"))["top1"])
    run = eval_model(run_dir / "weights" / "best.pt", EvalOptions(split="test", out=run_dir / "test"))
    return float(run.result.top1)


#: a min-max range needs two seeds: one seed per arm ranks the arms but has no spread for one to lie above
MIN_SEEDS = 2


def _verdict(result: CompareResult) -> None:
    scored = [a for a in result.arms if a.seeds]
    if not scored:
        result.verdict = "no arm has a confirmed result"
        return
    best = max(scored, key=lambda a: a.stats("val")[0])
    others = [a for a in result.arms if a is not best]
    result.best = best.arm
    if min(len(a.seeds) for a in result.arms) < MIN_SEEDS:
        result.tested = False
        result.verdict = (f"{best.arm} has the highest val mean, but an arm has fewer than {MIN_SEEDS} seeds: no "
                          f"min-max range to compare, not tested (--seeds {MIN_SEEDS} or more)")
        return
    low = best.stats("test")[1]
    above = [a.arm for a in others if a.seeds and low > a.stats("test")[2]]
    result.shown = len(above) == len(others)
    overlap = [a.arm for a in others if a.arm not in above]
    result.verdict = (f"{best.arm} has the highest val mean; its test min-max range over the seeds lies above "
                      "every other arm's: shown" if result.shown else
                      f"{best.arm} has the highest val mean, but its test min-max range overlaps that of "
                      f"{', '.join(overlap)}: not shown")


CSV_COLUMNS = ["arm", "trials_complete", "trials_pruned", "search_best_val", "seeds", "val_mean", "val_min", "val_max",
               "test_mean", "test_min", "test_max", "recipe", "best_trial", "best_params", "verdict"]


def write_tables(result: CompareResult, folder: Path) -> dict[str, Path]:
    """comparison.csv and comparison.md (the table as Markdown, with how it was made). The CSV adds each arm's
    starting recipe, its best trial and that trial's searched values (JSON), and on the best arm's row the verdict
    (shown / not shown)."""
    import csv
    import io

    header = "| arm | trials (complete / pruned) | best val top-1 of the search % | seeds | val top-1 % | " \
             "test top-1 % |"
    md = [header, "|---|---|---:|---:|---:|---:|"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for a in result.arms:
        val, test = a.stats("val"), a.stats("test")
        trial = a.tune.best
        best = trial.value if trial and trial.value is not None else None
        md.append(f"| {a.arm} | {a.tune.count('complete')} / {a.tune.count('pruned')} | "
                  f"{'-' if best is None else f'{best:.2f}'} | {len(a.seeds)} | {_range(val)} | {_range(test)} |")
        numbers = [*(val or ("", "", "")), *(test or ("", "", ""))]
        verdict = (("shown" if result.shown else "not shown") if result.tested else "not tested") \
            if a.arm == result.best else ""
        writer.writerow([a.arm, a.tune.count("complete"), a.tune.count("pruned"), "" if best is None else f"{best:.4f}",
                         len(a.seeds), *[v if v == "" else f"{v:.4f}" for v in numbers], a.recipe or "",
                         "" if trial is None else trial.number, "" if trial is None else json.dumps(trial.params),
                         verdict])
    md += ["", f"Verdict: {result.verdict}.", "", *[f"    {line}" for line in result.plan]]
    files = {"csv": folder / "comparison.csv", "markdown": folder / "comparison.md"}
    atomic_write_text(files["csv"], buf.getvalue())
    atomic_write_text(files["markdown"], "\n".join(md) + "\n")
    return files


def _range(stats: tuple[float, float, float] | None) -> str:
    return "-" if stats is None else f"{stats[0]:.2f} ({stats[1]:.2f}-{stats[2]:.2f})"
