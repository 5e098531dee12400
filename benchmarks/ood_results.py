"""Rejecting what is not one of the classes, on real data: how well each score of `fgcli eval --ood` separates a
model's test split from images of classes it never saw, and what the rejection threshold chosen on val does.

Three settings, each a model evaluated on its own test split against other images (their test split):
  - flowers102 model vs cub100 images (far: birds are not flowers),
  - cub100 model vs flowers102 images (the reverse),
  - cub80 model vs cub20 images: cub100 with 20 species held out of training (`prepare-data --exclude-classes`),
    which the model is then shown (`--classes`): the hard, realistic case, birds it does not know among birds it
    does. The held-out species are every 5th class of cub100 in its official (taxonomic) order, so they are
    spread over the families, look-alike groups included; the list is written to <work>/ood/classes/.

Everything runs through the CLI: `prepare-data` (with the class lists), `train` (the rejection threshold is
fitted on val at the end of training, `train.reject_recall` 0.95) and `eval --ood`. Nothing is fitted or chosen
on a test split. The flowers102 and cub100 models are the runs of other tables with the same recipe, data and
seed 0 (flowers102: the flowers102 table's `baseline` / `herbs` rows; cub100: the distillation table's student
alone / teacher), trained there first when missing; the cub80 models are trained here.

Each run leaves its summary (`<work>/results/ood/<setting>-<recipe>-s0.json`, the keys of
benchmarks/results/README.md: `val` holds the checkpoint's val top-1 and rejection threshold, `test` the scores),
so a second call prints the table at once; if any run fails, no table is printed and the exit code is 1.
`benchmarks/readme_results.py --tables ood` makes the README table (`TABLES`).

    python benchmarks/ood_results.py --work /tmp/fgcli-ood                    # the README table (CPU hours)
    python benchmarks/ood_results.py --work /tmp/fgcli-ood --recipes baseline_lite0_128
    python benchmarks/ood_results.py --work /tmp/fgcli-ood --run cub80=runs/train/exp7   # an existing run
    python benchmarks/ood_results.py --quick                                  # toy scale: demo stand-ins
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
import distill_results as distill  # noqa: E402
import flowers102_results as f102  # noqa: E402
from _cli import run, train  # noqa: E402
from _results import (  # noqa: E402
    FGCLI,
    TOY_DEMO,
    Context,
    Lookup,
    Row,
    Table,
    captioned,
    load_checkpoint,
    measured_rows,
    run_script,
    script_context,
    script_parser,
    toy_demo_args,
)

NAME = "ood"
#: setting -> (the training data, the --ood data)
SETTINGS = {"flowers102": ("flowers102", "cub100"), "cub100": ("cub100", "flowers102"), "cub80": ("cub80", "cub20")}
TITLES = {"flowers102": "**flowers102 model vs cub100 images**", "cub100": "**cub100 model vs flowers102 images**",
          "cub80": "**cub80 model vs the 20 held-out cub species**"}
RECIPES = ("baseline_lite0_128", "herbs_lite0_128")
HOLD_EVERY = 5  # every 5th class of cub100 is held out: 20 of 100
QUICK_HOLD_EVERY = 3  # --quick: 1 of the 5 classes of the birds' stand-in
SCORES = ("msp", "energy", "head_prob")


def held_out(classes: list[str], every: int = HOLD_EVERY) -> list[str]:
    """Every `every`-th class (the last of each group of `every`), in the data set's order."""
    return [c for i, c in enumerate(classes) if i % every == every - 1]


def write_list(path: Path, names: list[str]) -> Path:
    from fgcli.io import atomic_write_text

    atomic_write_text(path, "".join(f"{n}\n" for n in names))
    return path


def classes_of(prepared: Path) -> list[str]:
    import yaml

    return [str(c) for c in yaml.safe_load((prepared / "dataset.yaml").read_text(encoding="utf-8"))["classes"]]


def dataset(name: str, ctx: Context) -> Path:
    """A setting's data: flowers102 and cub100 as every table prepares them; cub80 / cub20 made here from cub100's
    source without / with its held-out classes (--quick: from the birds' stand-in)."""
    if name in ("flowers102", "cub100"):
        return ctx.prepared(name)
    folder = ctx.folder(NAME)
    out = folder / "data" / name
    if not (out / "dataset.yaml").is_file():
        every = QUICK_HOLD_EVERY if ctx.quick else HOLD_EVERY
        held = write_list(folder / "classes" / "cub_held_out.txt", held_out(classes_of(ctx.prepared("cub100")), every))
        keep = ["--exclude-classes", str(held)] if name == "cub80" else []
        if ctx.quick:  # the birds' stand-in: the same demo with its classes kept (cub20: the held-out ones only)
            source = ["demo", str(out), *toy_demo_args(2 * TOY_DEMO["demo_classes"]),
                      "--classes", str(ctx.toy_classes() if name == "cub80" else held)]
        else:
            source = ["cub", str(ctx.data_root("cub100")), "--out", str(out)]
            keep = keep or ["--classes", str(held)]
        run([*FGCLI, "prepare-data", *source, *keep], folder / "logs" / f"prepare-{name}.txt")
    return out


@dataclass(frozen=True)
class Plan:
    """What the table evaluates: `recipes` for every setting (None: RECIPES, --quick: the baseline's), and runs
    given as they are, (setting, best.pt), whose settings are then not trained."""

    settings: tuple[str, ...] = tuple(SETTINGS)
    recipes: tuple[str, ...] | None = None
    given: tuple[tuple[str, Path], ...] = ()

    def rows(self, quick: bool) -> list[Row]:
        recipes = self.recipes or (RECIPES[:1] if quick else RECIPES)
        given = {s for s, _ in self.given}
        out = [Row(f"{s}-run{i}", f"`{best}`") for i, (s, best) in enumerate(self.given) if s in self.settings]
        out += [Row(f"{s}-{r}", f"`{r}`", needs=tuple(filter(None, [reused(s, r)])))
                for s in self.settings if s not in given for r in recipes]
        return captioned(sorted(out, key=lambda row: list(SETTINGS).index(setting(row))),
                         lambda row: TITLES[setting(row)])

    def model(self, row: Row, seed: int, ctx: Context) -> Path:
        """The row's best.pt: given, another table's run (trained there when missing), or trained here."""
        name, _, recipe = row.name.partition("-")
        if recipe.startswith("run") and recipe[3:].isdigit():
            return self.given[int(recipe[3:])][1]
        if row.needs:
            return ctx.artifact(*row.needs[0], seed)
        data = dataset(SETTINGS[name][0], ctx)
        run_name = f"{row.name}-s{seed}"
        sets = f102.overrides([], ctx.quick)
        train([*FGCLI, "train", "--recipe", recipe, *(a for s in sets for a in ("--set", s)), "--data",
               str(data), "--seed", str(seed), "--device", "cpu", "--project", str(ctx.folder(NAME) / "runs"),
               "--name", run_name, "--exist-ok"], ctx.folder(NAME) / "runs" / run_name,
              ctx.folder(NAME) / "logs" / f"train-{run_name}.txt")
        return ctx.folder(NAME) / "runs" / run_name / "weights" / "best.pt"


def setting(row: Row) -> str:
    return row.name.partition("-")[0]


def reused(name: str, recipe: str) -> tuple[str, str] | None:
    """The (table, row) trained with `recipe` on the setting's data at seed 0 (other tables' runs), or None."""
    if name == "flowers102":
        return next((("flowers102", r) for r in f102.MAIN_ROWS if f102.ROWS[r] == (recipe, [])), None)
    if name == "cub100":
        kinds = [k for k in ("teacher", "alone", "linear_probe") if distill.Plan().recipe(k, False) == (recipe, [])]
        return (distill.NAME, f"cub100-{kinds[0]}") if kinds else None
    return None


def measure(plan: Plan, row: Row, seed: int, ctx: Context) -> dict:
    """`fgcli eval BEST --data DATA --split test --ood OOD`: the scores on test, and what the checkpoint holds from
    val (its val top-1 and the rejection threshold fitted there)."""
    best = plan.model(row, seed, ctx)
    train_data, ood_data = (dataset(name, ctx) for name in SETTINGS[setting(row)])
    out = ctx.folder(NAME) / "eval" / f"{row.name}-s{seed}"
    run([*FGCLI, "eval", str(best), "--data", str(train_data), "--split", "test", "--ood", str(ood_data),
         "--device", "cpu", "--out", str(out)], ctx.folder(NAME) / "logs" / f"eval-{row.name}-s{seed}.txt")
    metrics = json.loads((out / "metrics.json").read_text())
    ood = metrics["ood"]
    record = load_checkpoint(best).get("calibration") or {}
    return {"config": {"setting": setting(row), "method": metrics["method"], "backbone": metrics["backbone"],
                       "checkpoint": str(best), "reused": "/".join(row.needs[0]) + f"-s{seed}" if row.needs else None,
                       "data": str(train_data), "ood": str(ood_data)},
            "val": {"top1": 100 * record["top1"] if "top1" in record else None, "images": record.get("num_images"),
                    "temperature": record.get("temperature"), "reject": record.get("reject")},
            "test": {"top1": metrics["top1"], "images": ood["num_id"], "ood_images": ood["num_ood"],
                     "scores": ood["scores"], "notes": ood["notes"], "reject": ood.get("reject"),
                     "warnings": ood["warnings"]}}


def _cell(test: dict, score: str) -> str:
    found = test["scores"].get(score)
    return "–" if found is None else f"{found['auroc']:.3f} / {100 * found['fpr95']:.1f}"


HEADER = ["| model | val top-1 % | test top-1 % | test / OOD images | MSP: AUROC / FPR95 % | energy | head agreement | "
          "threshold (val, 95 %): test kept % / OOD rejected % |", "|---|---:|---:|---:|---:|---:|---:|---:|"]


def table(rows: list[Row], get: Lookup) -> list[str]:
    """Per model: val and test top-1, the AUROC / FPR at 95 % TPR of each score, and the stored threshold's effect."""
    lines = list(HEADER)
    for row, (r, *_) in measured_rows(rows, get, NAME, 7, lines):
        test, reject = r["test"], r["test"].get("reject")
        kept = "–" if not reject else f"{100 * reject['id_kept']:.1f} / {100 * reject['ood_rejected']:.1f}"
        val = "–" if r["val"].get("top1") is None else f"{r['val']['top1']:.2f}"
        lines.append(f"| {row.label}: {r['config']['method']} ({r['config']['backbone']}) | {val} | "
                     f"{test['top1']:.2f} | {test['images']} / {test['ood_images']} | "
                     + " | ".join(_cell(test, s) for s in SCORES) + f" | {kept} |")
    return lines


def make_table(plan: Plan = Plan()) -> Table:
    return Table(NAME, "Rejecting images of other classes (CPU)",
                 "each run: the model (flowers102 / cub100: another table's run of the recipe, seed 0; cub80: "
                 "`fgcli train --recipe R` on cub100 less every 5th species), then `fgcli eval best.pt --split test "
                 "--ood OTHER`", plan.rows, lambda row, seed, ctx: measure(plan, row, seed, ctx), table)


TABLES = [make_table()]


def parse_runs(items: list[str]) -> list[tuple[str, Path]]:
    """--run SETTING=PATH (a run folder or a best.pt) -> (setting, best.pt)."""
    runs = []
    for item in items:
        name, _, path = item.partition("=")
        if name not in SETTINGS or not path:
            sys.exit(f"--run {item}: use SETTING=PATH with SETTING one of {', '.join(SETTINGS)}")
        best = Path(path)
        best = best / "weights" / "best.pt" if best.is_dir() else best
        if not best.is_file():
            sys.exit(f"--run {item}: {best} does not exist")
        runs.append((name, best))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, "toy scale: demo stand-ins, tiny backbone, 2 epochs", ("flowers102", "cub100"))
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--recipes", nargs="+", default=None,
                        help=f"recipes of the settings without --run (default {' '.join(RECIPES)}; --quick: the first)")
    parser.add_argument("--run", action="append", default=[], metavar="SETTING=PATH",
                        help="an already trained run for a setting (repeatable); the setting is then not trained")
    parser.add_argument("--fresh", action="store_true", help="evaluate again (the models are not trained again)")
    args = parser.parse_args(argv)
    plan = Plan(tuple(args.settings), tuple(args.recipes) if args.recipes else None, tuple(parse_runs(args.run)))
    table = make_table(plan)
    ctx = script_context(args, table, distill.TABLES[0], f102.TABLE)
    run_script(ctx, table.rows(args.quick), args.fresh, args.report,
               f"{'QUICK (demo stand-ins, toy model): ' if args.quick else ''}each model on its own test split "
               "against the test split of the other data; AUROC / FPR at 95 % TPR (%); head agreement: mean "
               "probability the heads give to the fused top-1 class (HERBS / MGE-CNN); the threshold keeps 95 % of "
               "the val images")
    print(f"\nreports (metrics.json, confusions.html): {ctx.folder(NAME) / 'eval'}")


if __name__ == "__main__":
    main()
