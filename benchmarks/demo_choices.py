"""The demo recipes' two map choices (issue #23 §1), decided on the demo's val split: HERBS' share of kept tokens
(`herbs_demo_cpu`, `herbs_demo_scratch`: 1/8 of each stage's tokens against the paper-like 1/2) and the
random-init baseline's output stride (`baseline_demo_scratch`: 8 against 16 and timm's 32).

Each row and seed: `fgcli train --recipe R --data demo --seed S [--set ...]`; then on the 150 val images (carved
from train) the val top-1 of best.pt and the map score of `fgcli viz best.pt --data demo --split val --score`
(pointing game against the demo's part masks: HERBS' stage-1 score map, the baseline's CAM); and, reported but
never argued from, the same two numbers on the 500 test images. A choice is argued from the val columns only.

    python benchmarks/readme_results.py --tables demo_choices        # the README table
    python benchmarks/demo_choices.py --work /tmp/choices --rows herbs_cpu herbs_cpu_half
    python benchmarks/demo_choices.py --quick                       # toy scale: tiny backbone, 1 epoch
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run, train  # noqa: E402
from _results import (  # noqa: E402
    FGCLI,
    TOY_DEMO,
    TOY_SETS,
    Context,
    Lookup,
    Row,
    Table,
    measured_rows,
    run_script,
    script_context,
    script_parser,
    spread,
)

from fgcli.engine.rundir import read_results_csv

NAME = "demo_choices"
HALF = "herbs.num_selects=[0.5,0.5,0.5,0.5]"
#: row -> (recipe, --set overrides, the map scored); the first of each group is the recipe as shipped
ROWS: dict[str, tuple[str, list[str], str]] = {
    "herbs_cpu": ("herbs_demo_cpu", [], "score1"),
    "herbs_cpu_half": ("herbs_demo_cpu", [HALF], "score1"),
    "herbs_scratch": ("herbs_demo_scratch", [], "score1"),
    "herbs_scratch_half": ("herbs_demo_scratch", [HALF], "score1"),
    "baseline_scratch": ("baseline_demo_scratch", [], "cam"),
    "baseline_scratch_os16": ("baseline_demo_scratch", ["model.output_stride=16"], "cam"),
    "baseline_scratch_os32": ("baseline_demo_scratch", ["model.output_stride=null"], "cam"),
}
LABELS = {"herbs_cpu": "`herbs_demo_cpu` as shipped: 1/8 of each stage's tokens kept",
          "herbs_cpu_half": "`herbs_demo_cpu`, 1/2 kept",
          "herbs_scratch": "`herbs_demo_scratch` as shipped: 1/8 kept",
          "herbs_scratch_half": "`herbs_demo_scratch`, 1/2 kept",
          "baseline_scratch": "`baseline_demo_scratch` as shipped: output stride 8",
          "baseline_scratch_os16": "`baseline_demo_scratch`, output stride 16",
          "baseline_scratch_os32": "`baseline_demo_scratch`, output stride 32 (timm's)"}
SEEDS = (0, 1)
#: --quick: the toy demo, a tiny backbone without weights, 1 epoch (the recipes' map settings kept)
QUICK = [*TOY_SETS, *(f"data.{k}={v}" for k, v in TOY_DEMO.items())]


def maps(out: Path, chosen: str) -> dict:
    """Pointing game of the chosen map, and of every map, from `fgcli viz --score`'s scores.json."""
    rows = json.loads((out / "scores.json").read_text())
    every = {r["map"]: r["pointing"] for r in rows}
    return {"map": chosen, "pointing": every[chosen], "random": next(r["random"] for r in rows if r["map"] == chosen),
            "images": next(r["images"] for r in rows if r["map"] == chosen), "every": every}


def train_and_score(row: str, seed: int, work: Path, quick: bool = False) -> dict:
    """Train one row and seed, then score best.pt's maps and top-1 on val and on test."""
    recipe, sets, chosen = ROWS[row]
    sets = [*sets, *QUICK] if quick else list(sets)
    name = f"{row}-s{seed}{'-quick' if quick else ''}"
    run_dir = work / "runs" / name
    train([*FGCLI, "train", "--recipe", recipe, "--data", "demo", "--seed", str(seed), "--device", "cpu",
           *(a for s in sets for a in ("--set", s)), "--project", str(work / "runs"), "--name", name, "--exist-ok"],
          run_dir, work / "logs" / f"{name}.txt")
    best = run_dir / "weights" / "best.pt"
    scored = {}
    for split in ("val", "test"):
        out = work / "viz" / f"{name}-{split}"
        run([*FGCLI, "viz", str(best), "--split", split, "--score", "--num", "1", "--device", "cpu", "--out",
             str(out)], work / "logs" / f"{name}-viz-{split}.txt")
        scored[split] = maps(out, chosen)
    out = work / "eval" / f"{name}-test"
    run([*FGCLI, "eval", str(best), "--split", "test", "--device", "cpu", "--out", str(out)],
        work / "logs" / f"{name}-test.txt")
    history = read_results_csv(run_dir / "results.csv")
    picked = max(history, key=lambda r: float(r["val/top1"]))  # the epoch best.pt holds (first of equals)
    return {"config": {"recipe": recipe, "sets": sets, "data": "demo"},
            "val": {"top1": float(picked["val/top1"]), "best_epoch": int(picked["epoch"]), "maps": scored["val"]},
            "test": {"top1": json.loads((out / "metrics.json").read_text())["top1"], "maps": scored["test"]},
            "train": {"time_s": sum(float(r["epoch_time"]) for r in history), "epochs": len(history)}}


HEADER = ["| recipe and choice | seeds | val top-1 % | val pointing game (map; random map) | test top-1 % | "
          "test pointing game | training time |",
          "|---|---:|---:|---|---:|---:|---:|"]


def table(rows: list[Row], get: Lookup) -> list[str]:
    lines = list(HEADER)
    for row, runs in measured_rows(rows, get, NAME, 6, lines):
        val = [r["val"]["maps"] for r in runs]
        lines.append(f"| {row.label} | {len(runs)} | {spread([r['val']['top1'] for r in runs], 1)} | "
                     f"{spread([m['pointing'] for m in val])} (`{val[0]['map']}`; {val[0]['random']:.2f}) | "
                     f"{spread([r['test']['top1'] for r in runs], 1)} | "
                     f"{spread([r['test']['maps']['pointing'] for r in runs])} | "
                     f"{sum(r['train']['time_s'] for r in runs) / len(runs) / 60:.1f} min |")
    return lines


def _rows(quick: bool) -> list[Row]:
    return [Row(name, LABELS[name], (0,) if quick else SEEDS) for name in ROWS]


def _measure(row: Row, seed: int, ctx: Context) -> dict:
    return train_and_score(row.name, seed, ctx.folder(NAME), ctx.quick)


TABLE = Table(NAME, "The demo recipes' map choices, decided on val",
              "each run: `fgcli train --recipe R --data demo --seed S [--set ...]`, then `fgcli viz best.pt --split "
              "val|test --score` and `fgcli eval best.pt`", _rows, _measure, table)
TABLES = [TABLE]


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, "toy scale: tiny backbone, 5-class demo, 1 epoch")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help=f"default {SEEDS} (--quick: 0)")
    args = parser.parse_args(argv)
    ctx = script_context(args, TABLE)
    rows = [r for r in TABLE.rows(args.quick) if r.name in args.rows]
    if args.seeds:
        rows = [dataclasses.replace(r, seeds=tuple(args.seeds)) for r in rows]
    run_script(ctx, rows, report_only=args.report, note="mean (min-max) over seeds; choices argued from val only")


if __name__ == "__main__":
    main()
