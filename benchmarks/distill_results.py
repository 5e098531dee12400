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
On flowers102 the teacher, the student alone and the probe are the same recipe and seed as the `herbs`,
`baseline` and `linear_probe` rows of the flowers102 table (benchmarks/flowers102_results.py): their runs are
reused (trained there first when missing), not trained twice; a changed teacher is trained here.

Each row records val top-1 (the epoch best.pt holds, as chosen on val), test top-1 (`fgcli eval --split test`),
training time, and the latency of one image on the fastest CPU path (`fgcli bench best.pt --device cpu
--providers all --batch-sizes 1`: torch eager, onnxruntime's CPU provider and OpenVINO where its plugin is
installed; the fastest median). "The distilled student beats the student alone" is claimed only when its lowest
test top-1 over the seeds is above the highest of the student alone (the seed spread); otherwise not shown.

Each run leaves its summary (`<work>/results/distill/<data>-<model>-s<seed>.json`, the keys of
benchmarks/results/README.md), so an interrupted benchmark resumes where it stopped when given the same `--work`;
if any run fails, no table is printed and the exit code is 1. `benchmarks/readme_results.py --tables distill`
makes the README table (`TABLES`).

    python benchmarks/distill_results.py --work /tmp/fgcli-distill                # the README table (CPU hours)
    python benchmarks/distill_results.py --work /tmp/fgcli-distill --data cub100 --seeds 0
    python benchmarks/distill_results.py --work /tmp/fgcli-distill --report       # the table of what is measured
    python benchmarks/distill_results.py --quick                                  # toy scale: demo stand-ins
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
import flowers102_results as f102  # noqa: E402
from _cli import run  # noqa: E402
from _results import (  # noqa: E402
    FGCLI,
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
    spread,
    train_and_test,
)

NAME = "distill"
DATASETS = {"flowers102": "**flowers102** (official splits)", "cub100": "**cub100** (val carved from train)"}
KINDS = ["teacher", "distilled", "alone", "linear_probe"]
TITLES = {"teacher": "teacher", "distilled": "student, distilled", "alone": "student alone, same budget",
          "linear_probe": "linear probe"}
#: each kind's row of the flowers102 table: its recipe and overrides, and on flowers102 its run
F102_ROWS = {"teacher": "herbs", "distilled": "baseline", "alone": "baseline", "linear_probe": "linear_probe"}
TEACHER_RECIPE = f102.ROWS["herbs"][0]
SEEDS = (0, 1, 2)
BENCH = ["--device", "cpu", "--providers", "all", "--batch-sizes", "1"]
QUICK_BENCH = ["--warmup", "1", "--iters", "3"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the table trains: the teacher's recipe and extra overrides, the distilled student's overrides."""

    teacher_recipe: str = TEACHER_RECIPE
    teacher_sets: tuple[str, ...] = ()
    distill_sets: tuple[str, ...] = ()

    @property
    def own_teacher(self) -> bool:
        """A teacher other than the flowers102 table's `herbs` row: trained here."""
        return self.teacher_recipe != TEACHER_RECIPE or bool(self.teacher_sets)

    def reused(self, data: str, kind: str) -> tuple[str, str] | None:
        """The (table, row) whose run this row is, or None when it trains its own."""
        if data != "flowers102" or kind == "distilled" or (kind == "teacher" and self.own_teacher):
            return None
        return ("flowers102", F102_ROWS[kind])

    def teacher(self, data: str) -> tuple[str, str]:
        return self.reused(data, "teacher") or (NAME, f"{data}-teacher")

    def recipe(self, kind: str, quick: bool) -> tuple[str, list[str]]:
        """A kind's recipe and --set overrides (`quick`: on the toy model, as the flowers102 table's)."""
        recipe, sets = f102.ROWS[F102_ROWS[kind]]
        extra: tuple[str, ...] = self.distill_sets if kind == "distilled" else ()
        if kind == "teacher":
            recipe, sets, extra = self.teacher_recipe, ([] if self.own_teacher else sets), self.teacher_sets
        return recipe, [*f102.overrides(sets, quick), *extra]

    def rows(self, quick: bool) -> list[Row]:
        out = []
        for data in DATASETS:
            for kind in KINDS:
                reuse = self.reused(data, kind)
                needs = (self.teacher(data),) if kind == "distilled" else (reuse,) if reuse else ()
                label = f"{TITLES[kind]} (`{self.recipe(kind, False)[0]}`)"
                out.append(Row(f"{data}-{kind}", label, (0,) if quick else SEEDS, needs))
        return captioned(out, caption)


def split_name(row: str) -> tuple[str, str]:
    """'cub100-linear_probe' -> ('cub100', 'linear_probe')."""
    data, _, kind = row.partition("-")
    return data, kind


def train_command(kind: str, data: Path, seed: int, recipe: str, sets: list[str], teacher: Path | None) -> list[str]:
    """The `fgcli train` / `fgcli distill` command of one row (after `fgcli --quiet`)."""
    args = ["--recipe", recipe, *(a for s in sets for a in ("--set", s)), "--data", str(data), "--seed", str(seed),
            "--device", "cpu"]
    if kind == "distilled":
        if teacher is None or not teacher.is_file():
            raise RuntimeError(f"the teacher {teacher} is missing: train the teacher row first")
        return ["distill", str(teacher), *args]
    return ["train", *args]


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


def path_label(key: str) -> str:
    """A readable name for one `fgcli bench` path key ("BACKEND DEVICE PRECISION", as `fastest` stores it)."""
    backend, precision = key.split(" ")[0], key.split(" ")[-1]
    if backend == "torch":
        return f"torch eager {precision}"
    if backend == "openvino":
        return f"OpenVINO runtime {precision}"
    if "OpenVINOExecutionProvider" in key:
        return f"onnxruntime + OpenVINO EP {precision}"
    if "CPUExecutionProvider" in key:
        return f"onnxruntime CPU {precision}"
    return key


def fastest_paths(runs: list[dict]) -> str:
    """Which path was fastest, over a row's seeds: "name" or "name ×2, other ×1"."""
    counts = Counter(path_label(min(r["latency"]["paths"], key=r["latency"]["paths"].get)) for r in runs)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{label} ×{n}" for label, n in counts.most_common())


def latency(best: Path, name: str, ctx: Context) -> dict:
    """`fgcli bench` of one image on every CPU path: the fastest one's median (`latency_ms`) and the others."""
    out = ctx.folder(NAME) / "bench" / f"{name}.csv"
    run([*FGCLI, "bench", str(best), *BENCH, *(QUICK_BENCH if ctx.quick else []), "--threads", str(ctx.threads),
         "--out", str(out)], ctx.folder(NAME) / "logs" / f"{name}-bench.txt")
    found = fastest(out.read_text())
    return {"latency_ms": found.pop("latency_ms"), "latency": found}


def measure(plan: Plan, row: Row, seed: int, ctx: Context) -> dict:
    """One row and seed: its run (trained here, or reused), val / test top-1, and the fastest CPU latency."""
    data, kind = split_name(row.name)
    name = f"{row.name}-s{seed}"
    reuse = plan.reused(data, kind)
    if reuse is not None:  # the other table's run and numbers
        best, source = ctx.artifact(*reuse, seed), ctx.summary(*reuse, seed)
        if source is None:
            raise RuntimeError(f"{reuse[0]}/{reuse[1]} seed {seed} has no summary")
        numbers = {"val": source["val"], "test": source["test"], "train": source["train"]}
        trained_by = [c for c in source["command"] if shlex.split(c)[2:3] == ["train"]]
        config = {"reused": f"{reuse[0]}/{reuse[1]}-s{seed}", "trained_by": trained_by, **source["config"]}
    else:
        teacher = ctx.artifact(*plan.teacher(data), seed) if kind == "distilled" else None
        recipe, sets = plan.recipe(kind, ctx.quick)
        command = train_command(kind, ctx.prepared(data), seed, recipe, sets, teacher)
        trained = train_and_test(command, ctx.folder(NAME), name, ctx.prepared(data))
        best = trained.best
        numbers = {"val": trained.val(), "test": {"top1": trained.test["top1"], "top5": trained.test.get("top5")},
                   "train": trained.train()}
        config = {"recipe": recipe, "sets": sets, "data": data}
    ckpt = load_checkpoint(best)
    summary = {"config": {**config, "method": ckpt["method"], "backbone": ckpt["backbone"]}, **numbers,
               **latency(best, name, ctx)}
    if kind == "distilled":
        summary["distill"] = ckpt["distill"]
    return summary


def verdict(data: str, distilled: list[float] | None, alone: list[float] | None) -> str:
    """Whether the distilled student beats the student alone on `data` beyond the seed spread (test top-1s)."""
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


HEADER = ["| model | seeds | val top-1 % | test top-1 % | latency, batch 1 (fastest CPU path) | training time |",
          "|---|---:|---:|---:|---:|---:|"]


def table(rows: list[Row], get: Lookup) -> list[str]:
    """Per data set and model, mean (min-max) over seeds of val / test top-1, latency and training time; then
    per data set whether the distilled student beats the student alone."""
    lines, tests = list(HEADER), {}
    for row, runs in measured_rows(rows, get, NAME, 5, lines):
        tests[row.name] = [r["test"]["top1"] for r in runs]
        lines.append(f"| {row.label}: {runs[0]['config']['method']} ({runs[0]['config']['backbone']}) | {len(runs)} | "
                     f"{spread([r['val']['top1'] for r in runs])} | {spread(tests[row.name])} | "
                     f"{statistics.mean(r['latency_ms'] for r in runs):.2f} ms ({fastest_paths(runs)}) | "
                     f"{statistics.mean(r['train']['time_s'] for r in runs) / 60:.1f} min |")
    shown = [d for d in DATASETS if any(split_name(r.name) == (d, "distilled") for r in rows)]
    return [*lines, "", *(verdict(d, tests.get(f"{d}-distilled"), tests.get(f"{d}-alone")) for d in shown)]


def caption(row: Row) -> str:
    return DATASETS[split_name(row.name)[0]]


def make_table(plan: Plan = Plan()) -> Table:
    return Table(NAME, "Distillation (CPU)",
                 "each run: `fgcli train --recipe R --seed S` (flowers102: the flowers102 table's run) or `fgcli "
                 "distill TEACHER --recipe baseline_lite0_128 --seed S`, `fgcli eval best.pt --split test`, `fgcli "
                 "bench best.pt --device cpu --providers all --batch-sizes 1`", plan.rows,
                 lambda row, seed, ctx: measure(plan, row, seed, ctx), table,
                 lambda row, seed, ctx: checkpoint(plan, row, seed, ctx))


def checkpoint(plan: Plan, row: Row, seed: int, ctx: Context) -> Path:
    """The row's best.pt: the reused run's, or the one trained here (the distilled rows' teacher, ood's models)."""
    reuse = plan.reused(*split_name(row.name))
    if reuse is not None:
        return ctx.artifact(*reuse, seed)
    return ctx.folder(NAME) / "runs" / f"{row.name}-s{seed}" / "weights" / "best.pt"


TABLES = [make_table()]


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, "toy scale: demo stand-ins, tiny backbones, 2 epochs", ("flowers102", "cub100"))
    parser.add_argument("--data", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--rows", nargs="+", choices=KINDS, default=KINDS)
    parser.add_argument("--teacher-recipe", default=TEACHER_RECIPE)
    parser.add_argument("--teacher-set", action="append", default=[], help="extra --set of the teacher runs")
    parser.add_argument("--distill-set", action="append", default=[],
                        help="extra --set of the distilled runs, e.g. distill.temperature=4 (choose on val)")
    parser.add_argument("--threads", type=int, default=None, help="threads of fgcli bench (default OMP_NUM_THREADS)")
    parser.add_argument("--fresh", action="store_true", help="measure this table's runs again (not those reused)")
    args = parser.parse_args(argv)
    table = make_table(Plan(args.teacher_recipe, tuple(args.teacher_set), tuple(args.distill_set)))
    ctx = script_context(args, table, f102.TABLE, threads=args.threads)
    rows = [r for r in table.rows(args.quick) if split_name(r.name)[0] in args.data
            and split_name(r.name)[1] in args.rows]
    rows = captioned([dataclasses.replace(r, seeds=tuple(args.seeds)) if args.seeds else r for r in rows], caption)
    run_script(ctx, rows, args.fresh, args.report,
               f"{'QUICK (demo stand-ins, toy model): ' if args.quick else ''}mean (min-max) over seeds; val top-1 "
               "of the epoch chosen on val; latency: median of one image on the fastest of torch / onnxruntime CPU "
               "/ OpenVINO (`fgcli bench --device cpu --providers all`)")
    print(f"\nrun folders: {ctx.folder(NAME) / 'runs'}, {ctx.folder('flowers102') / 'runs'}")


if __name__ == "__main__":
    main()
