"""The equal-budget comparisons: baseline, HERBS and MGE-CNN each searched by `fgcli tune` with the same budget on
the validation split, then each arm's best recipe trained with new seeds and evaluated once on the test split.
Two comparisons: flowers102 (issue #25) and cub100 at 128 px (issue #28, stage 2; its arms' best recipes are then
confirmed at 224 px).

The flowers102 run is one command:

    fgcli tune --methods baseline,herbs,mge --data flowers102_prepared --trials 6 --seeds 3 --pruner median
        --max-epochs 12 --seed 0 --device cpu

The budget, the same for every arm and sized for a 2-core CPU:
6 trials (trial 0 is the shipped recipe: `baseline_lite0_128`, `herbs_lite0_128`, `mge_frozen_lite0_128`),
Optuna's median pruner on the per-epoch val top-1, at most 12 epochs a trial (the longest shipped recipe's);
then 3 seeds x 3 arms of confirmation runs. The summary is the
comparison's table as `fgcli tune` writes it (`comparison.csv` in the comparison folder): per arm the best trial
and its searched values (chosen on val), the trials complete / pruned, val and test top-1 mean and min-max over
the seeds, and whether the best arm is shown better (its test min-max range above every other arm's). An
interrupted run continues where it stopped (the studies live in `study.db` in that folder).

The cub100 run searches the three cub recipes at 128 px on cub100 prepared with 20 % of train as val (`CUB`):

    fgcli tune --recipes baseline_lite0_224_cub,herbs_lite0_224_cub,mge_lite0_224_cub --img-size 128 --epochs 15
        --set train.patience=0 --data cub100_prepared --trials 6 --seeds 1 --pruner median --seed 0 --device cpu

    python benchmarks/readme_results.py --tables tune                   # the README table (CPU hours)
    python benchmarks/tune_results.py --work /tmp/fgcli-tune            # the same, standalone
    python benchmarks/tune_results.py --work /tmp/fgcli-tune --comparison cub100   # one of the two
    python benchmarks/tune_results.py --work /tmp/fgcli-tune --report   # the table of what is measured
    python benchmarks/tune_results.py --quick                           # toy scale: 2 trials, 2 seeds, 2 epochs
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402
from _results import (  # noqa: E402
    FGCLI,
    TOY_MODEL,
    Context,
    Lookup,
    Row,
    Table,
    missing_row,
    run_script,
    script_context,
    script_parser,
)

NAME = "tune"
METHOD_NAMES = {"baseline": "baseline", "herbs": "HERBS", "mge": "MGE-CNN"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """One comparison's arms (methods, whose shipped recipes the studies start from, or recipes) and its equal
    budget (`max_epochs` None: fixed by `sets`)."""

    methods: tuple[str, ...] = ("baseline", "herbs", "mge")
    recipes: bool = False  # `methods` are recipes (`fgcli tune --recipes`)
    trials: int = 6
    seeds: int = 3
    pruner: str = "median"
    max_epochs: int | None = 12
    sets: tuple[str, ...] = ()
    data: str = "flowers102"  # a shared data set's name (_results.SHARED_SETS)
    flags: tuple[str, ...] = ()  # further `fgcli tune` flags, fixed for every arm (e.g. --img-size 128)
    title: str = "flowers102"  # how the table names the data and what `flags` fix

    def args(self) -> list[str]:
        most = [] if self.max_epochs is None else ["--max-epochs", str(self.max_epochs)]
        return ["--recipes" if self.recipes else "--methods", ",".join(self.methods), "--trials", str(self.trials),
                "--seeds", str(self.seeds), "--pruner", self.pruner, *most, *self.flags,
                *(a for s in self.sets for a in ("--set", s))]

    def describe(self) -> str:
        most = "" if self.max_epochs is None else f", at most {self.max_epochs} epochs a trial"
        return f"{self.trials} trials per arm, {self.pruner} pruner{most}, best recipe x {self.seeds} seeds"


README = Budget()
#: birds (#28, stage 2): the three cub recipes searched at 128 px, where a trial costs a third of one at 224 px,
#: each arm's best recipe then confirmed at 224 px by the cub100 table (trained until val stops improving). Every
#: trial trains 15 epochs (the Lite0 baseline's; HERBS' recipe stops by patience, here off for every arm), so the
#: epochs are not searched: the pruner stops the weak trials
CUB = Budget(("baseline_lite0_224_cub", "herbs_lite0_224_cub", "mge_lite0_224_cub"), True, trials=6, seeds=1,
             max_epochs=None, sets=("train.patience=0",), data="cub100-val20",
             flags=("--img-size", "128", "--epochs", "15"), title="cub100 at 128 px, 15 epochs, 20 % of train as val")
#: --quick: the shipped recipes of the three arms (named: with another backbone `--methods` would start from the
#: built-in defaults) on the toy model and data, 2 trials, 2 seeds (a min-max range), 2 epochs (one pruning point:
#: no trial is pruned on its first epoch); HERBS' kept tokens as shares (the paper's counts, one of the searched
#: choices, exceed the toy's 64-px feature maps)
QUICK = Budget(("baseline_lite0_128", "herbs_lite0_128", "mge_frozen_lite0_128"), True, trials=2, seeds=2,
               max_epochs=None, sets=(*TOY_MODEL, "train.epochs=2", "herbs.num_selects=[0.11,0.22,0.44,0.22]"))


def comparison(csv_text: str) -> list[dict[str, Any]]:
    """comparison.csv -> one dict per arm: its trials, best trial and values, val / test mean, min, max, verdict."""
    def numbers(r: dict[str, str], split: str) -> dict[str, float] | None:
        return None if r[f"{split}_mean"] == "" else {k: float(r[f"{split}_{k}"]) for k in ("mean", "min", "max")}

    arms = []
    for r in csv.DictReader(csv_text.splitlines()):
        arms.append({"arm": r["arm"], "recipe": r["recipe"], "complete": int(r["trials_complete"]),
                     "pruned": int(r["trials_pruned"]),
                     "search_best_val": float(r["search_best_val"]) if r["search_best_val"] else None,
                     "best_trial": int(r["best_trial"]) if r["best_trial"] else None,
                     "best_params": json.loads(r["best_params"] or "{}"), "seeds": int(r["seeds"]),
                     "val": numbers(r, "val"), "test": numbers(r, "test"), "verdict": r["verdict"]})
    return arms


def measure(budget: Budget, row: Row, seed: int, ctx: Context) -> dict:
    """`fgcli tune --methods ...` (or `--recipes ...`) on the budget's data (resumed when its folder holds an
    interrupted one); its table."""
    data = ctx.prepared(budget.data)
    folder = comparison_folder(row.name, seed, ctx)
    run([*FGCLI, "tune", *budget.args(), "--data", str(data), "--seed", str(seed), "--device", "cpu",
         *(["--workers", "0"] if ctx.quick else []), "--project", str(folder.parent), "--name", folder.name],
        ctx.folder(NAME) / "logs" / f"{folder.name}.txt")
    arms = comparison((folder / "comparison.csv").read_text())
    return {"config": {"recipes" if budget.recipes else "methods": list(budget.methods), "trials": budget.trials, "seeds": budget.seeds,
                       "pruner": budget.pruner, "max_epochs": budget.max_epochs, "sets": list(budget.sets),
                       "flags": list(budget.flags), "data": budget.data, "folder": str(folder)},
            "arms": arms, "val": {a["arm"]: a["val"] for a in arms}, "test": {a["arm"]: a["test"] for a in arms}}


def _range(numbers: dict[str, float] | None) -> str:
    return "—" if numbers is None else f"{numbers['mean']:.2f} ({numbers['min']:.2f}-{numbers['max']:.2f})"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, bool) else str(value)


def values(params: dict[str, Any]) -> str:
    """The searched values of a trial, each by its key's last part (`optim.lr` -> `lr`) where that is unique."""
    last = [k.rsplit(".", 1)[-1] for k in params]
    return ", ".join(f"{k if last.count(k.rsplit('.', 1)[-1]) > 1 else k.rsplit('.', 1)[-1]}={_value(v)}"
                     for k, v in params.items()) or "—"


HEADER = ["| arm (starting recipe) | best trial: its searched values (chosen on val) | trials complete / pruned | "
          "best val top-1 % of the search | seeds | val top-1 % | test top-1 % | best arm shown better? |",
          "|---|---|---:|---:|---:|---:|---:|---|"]


def table(rows: list[Row], get: Lookup) -> list[str]:
    """Per comparison, its label and one line per arm: its best trial, val / test top-1 mean (min-max), the
    verdict."""
    lines = list(HEADER)
    for row in rows:
        summary = get(NAME, row.name, row.seeds[0])
        if summary is None:
            lines.append(missing_row(row.label, 7))
            continue
        lines.append(f"| *{row.label}:* |" + "  |" * 7)
        for a in summary["arms"]:
            best = "—" if a["search_best_val"] is None else f"{a['search_best_val']:.2f}"
            trial = "no trial completed" if a["best_trial"] is None else (
                f"#{a['best_trial']}: {values(a['best_params'])}")
            arm = METHOD_NAMES.get(a["arm"], a["arm"])
            arm = f"`{a['recipe']}`" if a["recipe"] == a["arm"] else f"{arm} (`{a['recipe'] or 'built-in defaults'}`)"
            lines.append(f"| {arm} | {trial} | "
                         f"{a['complete']} / {a['pruned']} | {best} | {a['seeds']} | {_range(a['val'])} | "
                         f"{_range(a['test'])} | {a['verdict']} |")
    return lines


def row_of(budget: Budget) -> Row:
    arms = " vs ".join(METHOD_NAMES.get(m, m) for m in budget.methods)
    names = {README: "flowers102", QUICK: "flowers102", CUB: "cub100-128"}
    name = names.get(budget) or f"{budget.data}-{'-'.join(budget.methods)}-t{budget.trials}-n{budget.seeds}"
    return Row(name, f"{budget.title}: {arms}, {budget.describe()}")


def make_table(budget: Budget | None = None) -> Table:
    """The comparisons with `budget` (None: README's and CUB, --quick: QUICK)."""
    def chosen(quick: bool) -> list[Budget]:
        return [budget] if budget else [QUICK] if quick else [README, CUB]

    def measure_row(row: Row, seed: int, ctx: Context) -> dict:
        return measure(next(b for b in chosen(ctx.quick) if row_of(b).name == row.name), row, seed, ctx)

    return Table(NAME, "Equal-budget comparison (`fgcli tune`, CPU)",
                 "one run per comparison: `fgcli tune --methods A,B,C` (or `--recipes A,B,C`) `--trials N --seeds K "
                 "--pruner median --max-epochs E` (or fixed `--epochs E`) `--data PREPARED --seed S`, with the "
                 "budget and fixed flags the comparison names",
                 lambda quick: [row_of(b) for b in chosen(quick)], measure_row, table,
                 lambda row, seed, ctx: comparison_folder(row.name, seed, ctx))


def comparison_folder(row: str, seed: int, ctx: Context) -> Path:
    """A comparison's folder (its studies, trials and each arm's best_recipe.yaml), which other tables reuse."""
    return ctx.folder(NAME) / f"{row}-s{seed}"


TABLES = [make_table()]


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, "toy scale: tiny backbone, 2 trials, 2 seeds, 2 epochs", ("flowers102", "cub100"))
    parser.add_argument("--comparison", choices=["flowers102", "cub100"], default=None,
                        help="one of the README's comparisons (default: both)")
    parser.add_argument("--methods", default=None, help=f"the arms (default {','.join(README.methods)})")
    parser.add_argument("--trials", type=int, default=None, help=f"trials per arm (default {README.trials})")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds of each best recipe (default {README.seeds})")
    args = parser.parse_args(argv)
    if args.quick and args.comparison:
        parser.error("--quick runs the toy comparison only: drop --comparison")
    if args.methods and args.comparison == "cub100":
        parser.error("--methods starts from the methods' flowers recipes: not with --comparison cub100")
    if (args.trials is not None and args.trials < 1) or (args.seeds is not None and args.seeds < 1):
        parser.error("--trials and --seeds must be >= 1")
    base = QUICK if args.quick else CUB if args.comparison == "cub100" else README
    budget = None
    if args.quick or args.comparison or args.methods or args.trials or args.seeds:
        arms = tuple(a.strip() for a in args.methods.split(",") if a.strip()) if args.methods else base.methods
        budget = dataclasses.replace(base, methods=arms, recipes=base.recipes and not args.methods,
                                     trials=args.trials or base.trials, seeds=args.seeds or base.seeds)
    table = make_table(budget)
    ctx = script_context(args, table)
    run_script(ctx, table.rows(args.quick), report_only=args.report)
    print(f"\ntune folders (trials, comparison.md, plots): {ctx.folder(NAME)}")

if __name__ == "__main__":
    main()
