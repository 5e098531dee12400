"""Regenerate every results table of the README: one command, resumable, every run summarised.

Runs what each table needs (training through the fgcli CLI, evaluation, calibration, int8 export, timing) with
the README's rows and seeds, skipping every run whose summary exists, then prints each table in the README's
markdown with a line under it: the command, the dates, the CPU model and its AVX2 / AVX-512 / AMX flags, the
threads, and whether other work shared the CPU. Each run leaves `benchmarks/results/<table>/<row>-s<seed>.json`
(committed); run folders, checkpoints and exports go to `--work` (not committed). A table whose runs reuse
another table's trained model (calibration, int8, speed, distill, ood) trains it first when it is missing.

    python benchmarks/readme_results.py                      # everything still missing, then every table
    python benchmarks/readme_results.py --list               # tables, rows, seeds, what is done, CPU time left
    python benchmarks/readme_results.py --report             # every table from the summaries alone
    python benchmarks/readme_results.py --report --write-readme   # ... and put each into README.md in place
    python benchmarks/readme_results.py --tables demo,flowers102/herbs
    python benchmarks/readme_results.py --quick              # toy scale (minutes), summaries in --work/quick

Tables come from the per-table scripts (each exposes `TABLES`); a new table is one entry of TABLE_SCRIPTS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
import _readme  # noqa: E402
from _cli import ROOT  # noqa: E402
from _results import (  # noqa: E402
    SUMMARIES,
    WORK,
    Context,
    Row,
    Table,
    lookup,
    measure_missing,
    regenerate_command,
    report,
)

#: the scripts whose `TABLES` make the README's results, in the order they are measured
TABLE_SCRIPTS = ["demo_results", "demo_choices", "flowers102_results", "cub100_results", "flowers12_results", "calibration_results", "int8_results",
                 "onnx_vs_torch", "train_speed", "distill_results", "ood_results", "tune_results"]


def all_tables() -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for script in TABLE_SCRIPTS:
        for table in importlib.import_module(script).TABLES:
            tables[table.name] = table
    return tables


def select(spec: str | None, tables: dict[str, Table], quick: bool) -> dict[str, list[Row]]:
    """`--tables demo,flowers102/herbs` -> {table: its chosen rows} (every table and row when None)."""
    if not spec:
        return {name: table.rows(quick) for name, table in tables.items()}
    chosen: dict[str, list[Row]] = {}
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        name, _, row = item.partition("/")
        if name not in tables:
            raise SystemExit(f"--tables {item}: no table {name}; choose from {', '.join(tables)}")
        rows = tables[name].rows(quick)
        if row:
            picked = [r for r in rows if r.name == row]
            if not picked:
                raise SystemExit(f"--tables {item}: {name} has no row {row}; its rows: "
                                 f"{', '.join(r.name for r in rows)}")
            rows = picked
        chosen.setdefault(name, [])
        chosen[name] += [r for r in rows if r not in chosen[name]]
    return chosen


def parse_data(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--data {item}: give NAME=PATH, e.g. --data flowers102=/data/flowers102")
        out[name] = Path(path)
    return out


def minutes_left(table: Table, row: Row, ctx: Context) -> tuple[list[float], float | None]:
    """(minutes each measured seed took, estimated minutes per missing seed: the measured mean, else the row's
    estimate, else None)."""
    done = [s["time_s"] / 60 for seed in row.seeds if (s := ctx.summary(table.name, row.name, seed))]
    return done, statistics.mean(done) if done else row.minutes


def print_list(chosen: dict[str, list[Row]], tables: dict[str, Table], ctx: Context) -> None:
    for name, rows in chosen.items():
        table = tables[name]
        total, unknown, runs, measured = 0.0, 0, 0, 0
        lines = []
        for row in rows:
            done, each = minutes_left(table, row, ctx)
            missing = len(row.seeds) - len(done)
            runs, measured = runs + len(row.seeds), measured + len(done)
            if missing:
                if each is None:
                    unknown += missing
                else:
                    total += each * missing
            estimate = "?" if each is None else f"{each:.1f} min"
            needs = f"  (uses {', '.join(f'{t}/{r}' for t, r in row.needs)})" if row.needs else ""
            lines.append(f"  {row.name:<24} seeds {','.join(map(str, row.seeds)):<10} measured {len(done)}/"
                         f"{len(row.seeds)}  ≈ {estimate} per run{needs}")
        left = f"≈ {total / 60:.1f} h of CPU left" if total or not unknown else "CPU time left unknown"
        left += f" (+ {unknown} runs of unknown time)" if unknown and total else ""
        print(f"{name}: README \"{table.title}\", {runs} runs, {measured} measured, {left}")
        print("\n".join(lines))
    print("(times: minutes per run at 1 thread, from the run's summary when measured, else from the time measured "
          "for the README; `?` where none is known)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", default=None, help="a subset: TABLE or TABLE/ROW, comma-separated")
    parser.add_argument("--report", action="store_true", help="print the tables from the summaries only")
    parser.add_argument("--list", action="store_true", help="print each table's rows, seeds and time estimate")
    parser.add_argument("--write-readme", action="store_true",
                        help="also put each table into README.md, in place of the one above its measured line")
    parser.add_argument("--quick", action="store_true",
                        help="toy scale: tiny backbones, 64 px, a small demo, 1-2 epochs; separate folders")
    parser.add_argument("--work", type=Path, default=WORK, help=f"run folders and exports (default {WORK})")
    parser.add_argument("--summaries", type=Path, default=None,
                        help=f"per-run summaries (default {SUMMARIES}; --quick: WORK/quick/results)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every run (default 1)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help="a data set's folder (default ../shared/data/NAME): flowers102, flowers12, "
                             "cub100 (its CUB_200_2011 folder)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.write_readme and (args.quick or args.summaries):
        parser.error("--write-readme puts the committed summaries' tables into README.md: not with --quick or "
                     "--summaries")
    work = args.work / "quick" if args.quick else args.work
    summaries = args.summaries or (work / "results" if args.quick else SUMMARIES)
    tables = all_tables()
    chosen = select(args.tables, tables, args.quick)
    ctx = Context(work=work, summaries=summaries, quick=args.quick, threads=args.threads, tables=tables,
                  data=parse_data(args.data))
    if args.list:
        print_list(chosen, tables, ctx)
        return

    failures = []
    if not args.report:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # every fgcli command
        import torch

        torch.set_num_threads(args.threads)  # the timing done in this process
        failures = measure_missing(ctx, chosen)
    get = lookup(summaries)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8") if args.write_readme else ""
    for name in chosen:
        table = tables[name]
        text = report(table, table.rows(args.quick), get, regenerate_command(name, args.quick))
        print(f"\n<!-- {name}: README \"{table.title}\" -->")
        print(text)
        if args.write_readme:
            readme, status = _readme.place(readme, name, text)
            print(f"(README.md: {status})")
    if args.write_readme:
        from fgcli.io import atomic_write_text

        atomic_write_text(readme_path, readme)
    if failures:
        sys.exit("some runs failed (their rows read `missing`):\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
