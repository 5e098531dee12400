"""`fgcli tune`: parse the flags (every `fgcli train` flag, fixed across trials), delegate to fgcli.api.tune,
print the trials table or the comparison table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from fgcli.commands._common import handle_errors, share_options
from fgcli.commands.train import train_command
from fgcli.console import console

if TYPE_CHECKING:
    from fgcli.tuning.compare import CompareResult
    from fgcli.tuning.run import TuneResult

_SEARCH = "Search"
_COMPARE = "Comparison"


@handle_errors(fast_exit=True)
@share_options(train_command, drop=("resume", "exist_ok"))
def tune_command(
    trials: int | None = typer.Option(None, "--trials", "-n", min=1, rich_help_panel=_SEARCH,
                                      help="Trials in the study (all workers together); trial 0 is the recipe."),
    budget: str | None = typer.Option(None, "--budget", rich_help_panel=_SEARCH,
                                      help="Wall-clock budget of this worker (2h, 90m, 3600): no trial starts "
                                           "after it; the running one finishes."),
    space: str | None = typer.Option(None, "--space", rich_help_panel=_SEARCH,
                                     help="Search-space YAML: replaces the method's default space."),
    storage: str | None = typer.Option(None, "--storage", rich_help_panel=_SEARCH,
                                       help="Optuna database URL shared by workers, e.g. postgresql://u:p@host/db "
                                            "(default: study.db in the tune folder)."),
    study: str | None = typer.Option(None, "--study", rich_help_panel=_SEARCH,
                                     help="Study name (default <recipe>-<data>); the same name resumes it."),
    pruner: str = typer.Option("median", "--pruner", rich_help_panel=_SEARCH,
                               help="median, halving (successive halving) or none; on per-epoch val top-1."),
    max_epochs: int | None = typer.Option(None, "--max-epochs", min=1, rich_help_panel=_SEARCH,
                                          help="Largest train.epochs a trial may use (default 2x the recipe's)."),
    heartbeat: int = typer.Option(10, "--heartbeat", min=1, rich_help_panel=_SEARCH,
                                  help="Seconds between a running trial's heartbeats; one silent for 3x this is "
                                       "taken as killed and resumed from its last.pt."),
    startup_trials: int = typer.Option(10, "--startup-trials", min=1, rich_help_panel=_SEARCH,
                                       help="Finished trials (trial 0, the recipe, counts) before Optuna's TPE "
                                            "models them; until then it draws at random. Fewer suit a small budget."),
    dry_run: bool = typer.Option(False, "--dry-run", rich_help_panel=_SEARCH,
                                 help="Print the plan (space, fixed keys, trial 0) and stop."),
    recipes: str | None = typer.Option(None, "--recipes", rich_help_panel=_COMPARE,
                                       help="Compare these recipes (comma-separated) at an equal budget."),
    methods: str | None = typer.Option(None, "--methods", rich_help_panel=_COMPARE,
                                       help="Compare these methods' shipped recipes (baseline,herbs,mge)."),
    seeds: int = typer.Option(3, "--seeds", min=1, rich_help_panel=_COMPARE,
                              help="Seeds each arm's best recipe is trained with, then evaluated once on test."),
    project: str | None = typer.Option(None, "--project", help="Default runs/tune."),
    name: str | None = typer.Option(None, "--name", help="Tune folder name (default: the study name)."),
    **train_flags: Any,
) -> None:
    """Search hyper-parameters on the validation split (Optuna): each trial is an ordinary training run.

    Every `fgcli train` flag fixes its key for all trials (a key given by a flag or --set is not searched).

    Examples:
      fgcli tune --method herbs --data demo --trials 20
      fgcli tune --recipe herbs_lite0_128 --data ./flowers102 --budget 2h --epochs 12
      fgcli tune --method mge --data ./cub --trials 40 --space space.yaml --storage postgresql://u:p@db/fgcli
      fgcli tune --methods baseline,herbs,mge --data ./flowers102 --trials 20 --seeds 3
    """
    from fgcli import api

    set_ = train_flags.pop("set_", None)
    method, data = train_flags.pop("method", None), train_flags.pop("data", None)
    recipe, config = train_flags.pop("recipe", None), train_flags.pop("config", None)
    train_flags["logger"] = train_flags.get("logger") or None
    result = api.tune(method, data, recipe=recipe, config=config, trials=trials, budget=budget, space=space,
                      storage=storage, study=study, pruner=pruner, max_epochs=max_epochs, heartbeat=heartbeat,
                      startup_trials=startup_trials, dry_run=dry_run, recipes=_split(recipes),
                      methods=_split(methods), seeds=seeds, set=set_, project=project, name=name, **train_flags)
    from fgcli.tuning.compare import CompareResult

    if isinstance(result, CompareResult):
        print_comparison(result)
    else:
        print_study(result)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def print_study(result: TuneResult) -> None:
    """The plan (dry run), or the trials table, the best trial and the files."""
    if result.dry_run:
        for line in result.plan:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    console.print(trials_table(result))
    if result.best is not None:
        console.print(f"best: trial #{result.best.number}, val top-1 {result.best.value:.2f} %")
    for what, path in result.files.items():
        console.print(f"{what}: {path}")
    if "best_recipe" in result.files:
        console.print(f"next: fgcli train --recipe {result.files['best_recipe']} --data DATA")


def trials_table(result: TuneResult) -> Any:
    from rich.table import Table

    table = Table(title=f"fgcli tune: study {result.study} ({result.method}), {result.count('complete')} complete, "
                        f"{result.count('pruned')} pruned, {result.count('failed')} failed")
    table.add_column("trial", justify="right")
    for key in result.keys:
        table.add_column(_short(key, result.keys), justify="right")
    for column in ("val top-1 %", "epochs", "time", "pruned", "note"):
        table.add_column(column, justify="left" if column == "note" else "right")
    for r in result.rows:
        best = result.best is not None and r.number == result.best.number
        table.add_row(f"{'*' if best else ''}{r.number}", *[_fmt(r.params[k]) if k in r.params else ""
                                                            for k in result.keys],
                      "-" if r.value is None else f"{r.value:.2f}", "-" if r.epochs is None else str(r.epochs),
                      "-" if r.time_s is None else _duration(r.time_s), "yes" if r.pruned else "",
                      r.note if r.state in ("complete", "pruned") else f"{r.state}: {r.note}".rstrip(": "))
    return table


def _short(key: str, keys: list[str]) -> str:
    """A column header: the key's last part (`optim.lr` -> `lr`), unless two keys share it."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _duration(seconds: float) -> str:
    from fgcli.tuning.run import format_duration

    return format_duration(seconds)


def print_comparison(result: CompareResult) -> None:
    from rich.table import Table

    if result.dry_run:
        for line in result.plan:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=f"fgcli tune: {result.name} (equal budget: the same trials, pruner and maximum epochs)")
    for column in ("arm", "trials complete / pruned", "search best val %", "seeds", "val top-1 % mean (min-max)",
                   "test top-1 % mean (min-max)"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in result.arms:
        best = arm.tune.best.value if arm.tune.best is not None else None
        table.add_row(f"{'*' if arm.arm == result.best else ''}{arm.arm}",
                      f"{arm.tune.count('complete')} / {arm.tune.count('pruned')}",
                      "-" if best is None else f"{best:.2f}", str(len(arm.seeds)), _range(arm.stats("val")),
                      _range(arm.stats("test")))
    console.print(table)
    console.print(f"verdict: {result.verdict}")
    for what, path in result.files.items():
        console.print(f"{what}: {path}")


def _range(stats: tuple[float, float, float] | None) -> str:
    return "-" if stats is None else f"{stats[0]:.2f} ({stats[1]:.2f}-{stats[2]:.2f})"
