"""The demo table: baseline vs. HERBS vs. MGE-CNN on the built-in demo, as a new user runs them, on the CPU.

Each row and seed runs exactly what the README tells a user: `fgcli train --method M --data demo --seed S`
(the method's `models/<method>_demo_cpu.yaml`: EfficientNet-Lite0 from its ImageNet weights at 128 px, same
budget for every method), then `fgcli eval RUN/weights/best.pt` on the 500 test images. Per row: the val top-1
of best.pt (chosen on the 150 val images carved from train), the fused test top-1 and the training time, mean
(min-max) over the seeds. No number is picked on the test split.

    python benchmarks/readme_results.py --tables demo        # the README table (with its seeds)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run, train  # noqa: E402
from _results import (  # noqa: E402
    TOY_DEMO,
    TOY_SETS,
    Context,
    Lookup,
    Row,
    Table,
    measured_rows,
    spread,
)

from fgcli.engine.rundir import read_results_csv

METHODS = {"baseline": "baseline", "herbs": "HERBS", "mge": "MGE-CNN"}
#: the README's seeds: the range over five of them (a new user's one run may land anywhere in it)
SEEDS = (0, 1, 2, 3, 4)
#: training minutes per run measured for the README (seed 0, one thread, the CPU shared)
MINUTES = {"baseline": 22.2, "herbs": 17.5, "mge": 23.4}


def train_and_evaluate(method: str, seed: int, work: Path, quick: bool = False) -> dict:
    """`fgcli train --method M --data demo --seed S`, then `fgcli eval best.pt` on the demo's test split.
    `quick`: the same recipe on a tiny backbone and a 5-class demo, 1 epoch."""
    name = f"{method}-s{seed}"
    fgcli = [sys.executable, "-m", "fgcli", "--quiet"]
    sets = [*TOY_SETS, *(f"data.{k}={v}" for k, v in TOY_DEMO.items())] if quick else []
    # with a backbone set the demo recipe is no longer implied, so --quick names it
    toy = ["--recipe", f"{method}_demo_cpu", *(a for s in sets for a in ("--set", s))] if quick else []
    run_dir = work / "runs" / name
    train([*fgcli, "train", "--method", method, "--data", "demo", "--seed", str(seed), "--device", "cpu", *toy,
           "--project", str(work / "runs"), "--name", name, "--exist-ok"], run_dir, work / "logs" / f"{name}.txt")
    out = work / "eval" / f"{name}-test"
    run([*fgcli, "eval", str(run_dir / "weights" / "best.pt"), "--split", "test", "--device", "cpu",
         "--out", str(out)], work / "logs" / f"{name}-test.txt")
    test = json.loads((out / "metrics.json").read_text())
    history = read_results_csv(run_dir / "results.csv")
    best = max(history, key=lambda r: float(r["val/top1"]))  # the epoch best.pt holds (first of equals)
    return {"config": {"method": method, "recipe": f"{method}_demo_cpu", "data": "demo", "sets": sets},
            "val": {"top1": float(best["val/top1"]), "best_epoch": int(best["epoch"])},
            "test": {"top1": test["top1"], "images": test["num_samples"]},
            "train": {"time_s": sum(float(r["epoch_time"]) for r in history), "epochs": len(history)}}


HEADER = ["| method | recipe | seeds | best val top-1 % | fused test top-1 % | training time |",
          "|---|---|---:|---:|---:|---:|"]


def table(rows: list[Row], get: Lookup) -> list[str]:
    lines = list(HEADER)
    for row, runs in measured_rows(rows, get, "demo", 5, lines):
        lines.append(f"| {row.label} | `{runs[0]['config']['recipe']}` | {len(runs)} | "
                     f"{spread([r['val']['top1'] for r in runs], 1)} | "
                     f"{spread([r['test']['top1'] for r in runs], 1)} | "
                     f"{statistics.mean(r['train']['time_s'] for r in runs) / 60:.1f} min |")
    return lines


def _rows(quick: bool) -> list[Row]:
    return [Row(method, label, (0,) if quick else SEEDS, minutes=None if quick else MINUTES[method])
            for method, label in METHODS.items()]


def _measure(row: Row, seed: int, ctx: Context) -> dict:
    return train_and_evaluate(row.name, seed, ctx.folder("demo"), ctx.quick)


def _checkpoint(row: Row, seed: int, ctx: Context) -> Path:
    return ctx.folder("demo") / "runs" / f"{row.name}-s{seed}" / "weights" / "best.pt"


TABLE = Table("demo", "The demo (CPU)", "each run: `fgcli train --method M --data demo --seed S`, then `fgcli "
              "eval RUN/weights/best.pt`", _rows, _measure, table, _checkpoint)
TABLES = [TABLE]
