"""Distillation on real data: is a small baseline taught by a big teacher better than the same baseline trained
alone, and what does each model cost at inference?

For each data set (flowers102, official splits; cub100, val carved from train) and seed, four rows, all through
the CLI:
  - teacher: `fgcli train --recipe herbs_lite0_128` (`--teacher-recipe`, `--teacher-set` to change it);
  - distilled: `fgcli distill TEACHER/best.pt --recipe baseline_lite0_128` (that seed's teacher; `--distill-set`
    for distill.alpha / distill.temperature, which must be chosen on val, never on test);
  - alone: `fgcli train --recipe baseline_lite0_128`, the same student with the same budget (recipe, epochs,
    batch, schedule, augmentation, seed): only the teacher's term differs;
  - linear probe: `fgcli train --recipe linear_probe_lite0_128`.
Each row records val top-1 (the epoch best.pt holds, as chosen on val), test top-1 (`fgcli eval --split test`),
training time, and the latency of one image on the fastest CPU path (`fgcli bench best.pt --device cpu
--providers all --batch-sizes 1`: torch eager, onnxruntime's CPU provider and OpenVINO where its plugin is
installed; the fastest median). "The distilled student beats the student alone" is claimed only when its lowest
test top-1 over the seeds is above the highest of the student alone (the seed spread); otherwise not shown.

Each run leaves its summary (`<work>/results/distill/<data>-<row>-s<seed>.json`: `config`, `val`, `test`, `train`,
`latency_ms` and `latency`, `time_s`, `date`, `command`, the keys of benchmarks/results/README.md), so an
interrupted benchmark resumes where it stopped when given the same `--work`; if any run fails, no table is
printed and the exit code is 1.

    python benchmarks/distill_results.py --work /tmp/fgcli-distill                # the README table (CPU hours)
    python benchmarks/distill_results.py --work /tmp/fgcli-distill --data cub100 --seeds 0
    python benchmarks/distill_results.py --work /tmp/fgcli-distill --report       # the table of what is measured
    python benchmarks/distill_results.py --quick                                  # toy scale: demo stand-ins
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SOURCES = {"flowers102": ("flowers102", SHARED / "flowers102"), "cub100": ("cub", SHARED / "cub100" / "CUB_200_2011")}
ROWS = ["teacher", "distilled", "alone", "linear_probe"]
TABLE = "distill"
TITLES = {"teacher": "teacher", "distilled": "student, distilled", "alone": "student alone (same budget)",
          "linear_probe": "linear probe"}
TEACHER_RECIPE = "herbs_lite0_128"
STUDENT_RECIPE = "baseline_lite0_128"
PROBE_RECIPE = "linear_probe_lite0_128"
FGCLI = [sys.executable, "-m", "fgcli", "--quiet"]
BENCH = ["--device", "cpu", "--providers", "all", "--batch-sizes", "1"]

# --quick: two demo data sets standing in for the real ones, a 48-px test_resnet baseline teacher (another input
# size than the student's, so the teacher's own preprocessing is exercised) and 32-px test_efficientnet students,
# 1 epoch, short timings
QUICK_DEMO = ["--demo-classes", "4", "--demo-per-class", "8", "--demo-size", "32", "--val-fraction", "0.25"]
QUICK_COMMON = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--lr", "0.05"]
QUICK = {"teacher": ["--method", "baseline", "--backbone", "test_resnet", "--img-size", "48", *QUICK_COMMON],
         "distilled": ["--student", "test_efficientnet", "--img-size", "32", *QUICK_COMMON],
         "alone": ["--method", "baseline", "--backbone", "test_efficientnet", "--img-size", "32", *QUICK_COMMON],
         "linear_probe": ["--method", "baseline", "--backbone", "test_efficientnet", "--img-size", "32",
                          "--set", "model.freeze=backbone", *QUICK_COMMON]}
QUICK_BENCH = ["--warmup", "1", "--iters", "3"]


def prepare(work: Path, names: list[str], quick: bool = False) -> dict[str, Path]:
    """The prepared data sets under <work>/data, made once (--quick: demos with seeds 0, 1)."""
    sets = {}
    for i, name in enumerate(names):
        out = work / "data" / name
        if not (out / "dataset.yaml").is_file():
            if quick:
                cmd = [*FGCLI, "prepare-data", "demo", str(out), *QUICK_DEMO, "--seed", str(i)]
            else:
                fmt, src = SOURCES[name]
                if not src.is_dir():
                    sys.exit(f"{src} not found: the {name} data set is needed (../shared/data)")
                cmd = [*FGCLI, "prepare-data", fmt, str(src), "--out", str(out)]
            run(cmd, work / "logs" / f"prepare-{name}.txt")
        sets[name] = out
    return sets


def run_dir(work: Path, data: str, row: str, seed: int) -> Path:
    return work / "runs" / f"{data}-{row}-s{seed}"


def train_command(row: str, data: Path, seed: int, work: Path, name: str, quick: bool, teacher: Path | None,
                  teacher_recipe: str, teacher_sets: list[str], distill_sets: list[str]) -> list[str]:
    """The `fgcli train` / `fgcli distill` command of one row."""
    where = ["--data", str(data), "--seed", str(seed), "--device", "cpu", "--project", str(work / "runs"),
             "--name", name, "--exist-ok"]
    if quick:
        args = QUICK[row]
    else:
        recipe = {"teacher": teacher_recipe, "distilled": STUDENT_RECIPE, "alone": STUDENT_RECIPE,
                  "linear_probe": PROBE_RECIPE}[row]
        args = ["--recipe", recipe]
    sets = teacher_sets if row == "teacher" else distill_sets if row == "distilled" else []
    args = [*args, *(a for s in sets for a in ("--set", s))]
    if row == "distilled":
        if teacher is None or not teacher.is_file():
            raise RuntimeError(f"the teacher {teacher} is missing: train the teacher row first")
        return [*FGCLI, "distill", str(teacher), *args, *where]
    return [*FGCLI, "train", *args, *where]


def fastest(bench_csv: str) -> dict:
    """The fastest batch-1 row of `fgcli bench --out` CSV: median latency, backend, where, precision."""
    rows = [r for r in csv.DictReader(io.StringIO(bench_csv)) if int(r["batch"]) == 1]
    if not rows:
        raise RuntimeError("fgcli bench wrote no batch-1 row")
    best = min(rows, key=lambda r: float(r["p50_ms"]))
    device = best["device"].removeprefix("onnxruntime ").removeprefix("torch ").replace("ExecutionProvider", "")
    return {"latency_ms": float(best["p50_ms"]), "path": f"{best['backend']} {device.split(' (')[0]} {best['precision']}",
            "threads": int(best["threads"]), "img_size": int(best["img_size"]),
            "paths": {f"{r['backend']} {r['device']} {r['precision']}": float(r["p50_ms"]) for r in rows}}


def measure(data_name: str, row: str, seed: int, data: Path, work: Path, quick: bool, threads: int | None,
            **train_args) -> dict:
    """Train (or distil) one row, then its val / test top-1 and its fastest CPU latency: the run's summary."""
    from fgcli.engine.rundir import read_results_csv

    name = f"{data_name}-{row}-s{seed}"
    commands: list[str] = []

    def call(cmd: list[str], log: Path) -> None:
        commands.append(shlex.join(["fgcli", *cmd[len(FGCLI):]]))
        run(cmd, log)

    start = time.monotonic()
    teacher = run_dir(work, data_name, "teacher", seed) / "weights" / "best.pt" if row == "distilled" else None
    train_cmd = train_command(row, data, seed, work, name, quick, teacher, **train_args)
    call(train_cmd, work / "logs" / f"{name}.txt")
    folder = run_dir(work, data_name, row, seed)
    best = folder / "weights" / "best.pt"
    out = work / "eval" / name
    call([*FGCLI, "eval", str(best), "--data", str(data), "--split", "test", "--device", "cpu", "--out", str(out)],
         work / "logs" / f"{name}-test.txt")
    test = json.loads((out / "metrics.json").read_text())
    history = read_results_csv(folder / "results.csv")
    chosen = max(history, key=lambda r: float(r["val/top1"]))  # the epoch best.pt holds (first of equals)
    bench_csv = work / "bench" / f"{name}.csv"
    call([*FGCLI, "bench", str(best), *BENCH, *(QUICK_BENCH if quick else []),
          *(["--threads", str(threads)] if threads else []), "--out", str(bench_csv)],
         work / "logs" / f"{name}-bench.txt")
    latency = fastest(bench_csv.read_text())
    summary = {"table": TABLE, "row": f"{data_name}-{row}", "seed": seed, "data": data_name, "model": row,
               "config": {"trained_by": commands[0], "method": test["method"], "backbone": test["backbone"]},
               "val": {"top1": float(chosen["val/top1"]), "best_epoch": int(chosen["epoch"])},
               "test": {"top1": test["top1"], "top5": test.get("top5")},
               "train": {"time_s": sum(float(r["epoch_time"]) for r in history), "epochs": len(history)},
               "latency_ms": latency.pop("latency_ms"), "latency": latency, "quick": quick,
               "time_s": round(time.monotonic() - start, 1), "threads": latency["threads"],
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": commands}
    if row == "distilled":
        import torch

        summary["distill"] = torch.load(best, map_location="cpu", weights_only=True)["distill"]
    return summary


def spread(values: list[float], digits: int = 2) -> str:
    """'mean' for one value, 'mean (min-max)' for several."""
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def verdict(results: list[dict], data: str) -> str:
    """Whether the distilled student beats the student alone on `data` beyond the seed spread (test top-1)."""
    distilled = [r["test"]["top1"] for r in results if r["data"] == data and r["model"] == "distilled"]
    alone = [r["test"]["top1"] for r in results if r["data"] == data and r["model"] == "alone"]
    if not distilled or not alone:
        return f"{data}: no verdict (the distilled student and the student alone are both needed)"
    gain = statistics.mean(distilled) - statistics.mean(alone)
    seeds = f"{len(distilled)} / {len(alone)} seeds"
    if len(distilled) < 2 or len(alone) < 2:
        return f"{data}: distilled - alone = {gain:+.2f} test top-1 points on the mean ({seeds}): not shown (one seed)"
    if min(distilled) > max(alone):
        return (f"{data}: the distilled student beats the student alone: {gain:+.2f} points on the mean, every seed "
                f"({min(distilled):.2f} lowest) above the best of the student alone ({max(alone):.2f}); {seeds}")
    return (f"{data}: not shown: {gain:+.2f} points on the mean, within the seed spread (distilled lowest "
            f"{min(distilled):.2f} vs alone highest {max(alone):.2f}); {seeds}")


def table(results: list[dict]) -> str:
    """Markdown: per data set and model, mean (min-max) over seeds of val / test top-1, latency, training time."""
    lines = ["| data | model | seeds | val top-1 % | test top-1 % | latency, batch 1 (fastest CPU path) | "
             "training time |", "|---|---|---:|---:|---:|---:|---:|"]
    for data in dict.fromkeys(r["data"] for r in results):
        for row in ROWS:
            runs = [r for r in results if r["data"] == data and r["model"] == row]
            if not runs:
                continue
            paths = sorted({r["latency"]["path"] for r in runs})
            model = f"{TITLES[row]}: {runs[0]['config']['method']} ({runs[0]['config']['backbone']})"
            lines.append(f"| {data} | {model} | {len(runs)} | {spread([r['val']['top1'] for r in runs])} | "
                         f"{spread([r['test']['top1'] for r in runs])} | "
                         f"{statistics.mean(r['latency_ms'] for r in runs):.2f} ms ({', '.join(paths)}) | "
                         f"{statistics.mean(r['train']['time_s'] for r in runs) / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="prepared data, runs, reports and results (reused)")
    parser.add_argument("--data", nargs="+", choices=list(SOURCES), default=list(SOURCES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    parser.add_argument("--teacher-recipe", default=TEACHER_RECIPE)
    parser.add_argument("--teacher-set", action="append", default=[], help="extra --set of the teacher runs")
    parser.add_argument("--distill-set", action="append", default=[],
                        help="extra --set of the distilled runs, e.g. distill.temperature=4 (choose on val)")
    parser.add_argument("--threads", type=int, default=None, help="fgcli bench --threads (default: its own)")
    parser.add_argument("--quick", action="store_true", help="toy scale: demo stand-ins, tiny backbones, 1 epoch")
    parser.add_argument("--report", action="store_true", help="print the table of the saved runs; train nothing")
    parser.add_argument("--fresh", action="store_true", help="ignore saved per-run results")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-distill-"))
    seeds = [0] if args.quick and args.seeds == [0, 1, 2] else args.seeds
    sets = {} if args.report else prepare(work, args.data, args.quick)
    train_args = {"teacher_recipe": args.teacher_recipe, "teacher_sets": args.teacher_set,
                  "distill_sets": args.distill_set}
    results, failures = [], []
    for data in args.data:
        for seed in seeds:
            for row in args.rows:
                label = f"{data}-{row}-s{seed}"
                saved = work / "results" / TABLE / f"{label}.json"
                if saved.is_file() and not args.fresh:
                    results.append(json.loads(saved.read_text()))
                    continue
                if args.report:
                    print(f"not measured yet: {label}")
                    continue
                try:
                    result = measure(data, row, seed, sets[data], work, args.quick, args.threads, **train_args)
                except RuntimeError as e:
                    failures.append(f"{label}: {e}")
                    print(f"FAILED {label}", flush=True)
                    continue
                from fgcli.io import atomic_write_text

                saved.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(saved, json.dumps(result, indent=1) + "\n")
                results.append(result)
                print(f"{label}: test top-1 {result['test']['top1']:.2f} %, {result['latency_ms']:.2f} ms "
                      f"({result['time_s'] / 60:.1f} min)", flush=True)
    if failures:
        sys.exit("no table: some runs failed\n" + "\n".join(failures))
    print(f"\n{'QUICK (demo stand-ins, 1 epoch): ' if args.quick else ''}mean (min-max) over seeds; val top-1 of "
          "the epoch chosen on val; latency: median of one image on the fastest of torch / onnxruntime CPU / "
          "OpenVINO (`fgcli bench --device cpu --providers all`)")
    print(table(results))
    for data in dict.fromkeys(r["data"] for r in results):
        print(verdict(results, data))
    print(f"\nrun folders: {work / 'runs'}")


if __name__ == "__main__":
    main()
