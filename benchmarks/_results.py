"""The README's results tables: their rows, one summary per measured run, and the markdown they print.

A `Table` names its rows and the seeds of each (`rows`), measures one row and seed through the fgcli CLI
(`measure`) and renders its markdown from the summaries alone (`render`). Each measured run leaves one small
JSON summary, `<summaries>/<table>/<row>-s<seed>.json`: the table's numbers (`config`, `val`, `test`, ...) and
how they were measured (`time_s`, `cpu`, `cpus`, `threads`, `other_load`, `cpu_shared`, `date`, `command`,
`fgcli`). A run whose summary exists is never measured again, so an interrupted regeneration continues where it
stopped; a row with a missing summary reads `missing`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import ROOT, recording, run, train  # noqa: E402
from _machine import SHARED_LOAD, CpuShare, cpu_count, cpu_line  # noqa: E402

SUMMARIES = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "readme_results"
SHARED_DATA = ROOT.parent / "shared" / "data"
MISSING = "missing"
FGCLI = [sys.executable, "-m", "fgcli", "--quiet"]
#: the shared data sets tables prepare with `prepare-data`: name -> (format, folder under ../shared/data, a file
#: of its layout, further prepare-data options). A name with a suffix (`cub100-val20`) is another preparation of
#: the set before the dash (same folder, same `--data NAME=PATH`)
SHARED_SETS = {"flowers102": ("flowers102", "flowers102", "setid.mat", ()),
               "cub100": ("cub", "cub100/CUB_200_2011", "images.txt", ()),
               # the birds comparison (#28): ~600 val images, where the default 10 % gives a 2-point standard error
               "cub100-val20": ("cub", "cub100/CUB_200_2011", "images.txt", ("--val-fraction", "0.2"))}
#: --quick: a tiny timm backbone without pretrained weights at 64 px, small method settings, batch 8 (1 epoch)
TOY_MODEL = ["model.backbone=test_resnet", "model.pretrained_file=null", "data.img_size=64", "data.resize=64",
             "data.workers=0", "train.batch_size=8", "herbs.fpn_size=16", "mge.part_mult=2", "mge.gate_hidden=16"]
TOY_SETS = [*TOY_MODEL, "train.epochs=1"]
#: --quick data: a demo with 5 classes (top-5 exists), 9 train / 3 val / 4 test images per class
TOY_DEMO = {"demo_classes": 5, "demo_per_class": 12, "val_fraction": 0.25}


def toy_demo_args(classes: int = TOY_DEMO["demo_classes"]) -> list[str]:
    """`prepare-data demo` options of the --quick data (with `classes` demo classes)."""
    return ["--demo-classes", str(classes), "--demo-per-class", str(TOY_DEMO["demo_per_class"]), "--val-fraction",
            str(TOY_DEMO["val_fraction"])]

Lookup = Callable[[str, str, int], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Row:
    """One row of a table: measured once per seed. `needs`: (table, row) pairs measured first at the same seed
    (the trained run this row reuses); `minutes`: CPU minutes per run where known; `before`: a caption row."""

    name: str
    label: str
    seeds: tuple[int, ...] = (0,)
    needs: tuple[tuple[str, str], ...] = ()
    minutes: float | None = None
    before: str | None = None


@dataclass(frozen=True)
class Table:
    """A README results table. `runs`: what each run does, in commands (printed under the table); `artifact`:
    the file or folder of a measured run that other tables reuse (a checkpoint, an export folder)."""

    name: str
    title: str
    runs: str
    rows: Callable[[bool], list[Row]]
    measure: Callable[[Row, int, Context], dict[str, Any]]
    render: Callable[[list[Row], Lookup], list[str]]
    artifact: Callable[[Row, int, Context], Path] | None = None

    def row(self, name: str) -> Row:
        for quick in (False, True):
            for row in self.rows(quick):
                if row.name == name:
                    return row
        raise KeyError(f"{self.name} has no row {name}")


@dataclass
class Context:
    """Where a regeneration works: run folders and exports under `work` (not committed), summaries under
    `summaries`; `quick`: toy scale; `tables`: every table by name (for rows that reuse another's runs)."""

    work: Path
    summaries: Path
    quick: bool = False
    threads: int = 1
    tables: dict[str, Table] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)
    failed: dict[tuple[str, str, int], str] = field(default_factory=dict)  # runs not tried again in this call

    def folder(self, table: str) -> Path:
        return self.work / table

    def data_root(self, name: str) -> Path:
        """A shared data set's folder (`--data NAME=PATH` overrides ../shared/data/NAME; cub100: its
        CUB_200_2011 folder)."""
        base = name.split("-")[0]
        return self.data.get(base, SHARED_DATA / SHARED_SETS.get(base, (base, base))[1])

    def summary(self, table: str, row: str, seed: int) -> dict[str, Any] | None:
        return read_summary(summary_path(self.summaries, table, row, seed))

    def artifact(self, table: str, row: str, seed: int) -> Path:
        entry = self.tables[table]
        if entry.artifact is None:
            raise KeyError(f"{table} keeps nothing that other tables reuse")
        return entry.artifact(entry.row(row), seed, self)

    def toy_data(self, other: bool = False) -> Path:
        """The prepared toy demo every --quick table but the demo's trains on (made once); `other`: a stand-in
        with as many other classes (the next ones of a demo twice as large), e.g. cub100's beside flowers102's."""
        name = "toy_demo_other" if other else "toy_demo"
        folder = self.work / "data" / name
        if not (folder / "dataset.yaml").is_file():
            extra = toy_demo_args()
            if other:
                extra = [*toy_demo_args(2 * TOY_DEMO["demo_classes"]), "--classes", str(self.toy_classes())]
            run([*FGCLI, "prepare-data", "demo", str(folder), *extra], self.work / "data" / f"{name}.txt")
        return folder

    def toy_classes(self) -> Path:
        """The file naming the classes of `toy_data(other=True)` (one a line)."""
        from fgcli.data.demo import class_names
        from fgcli.io import atomic_write_text

        path = self.work / "data" / "toy_demo_other_classes.txt"
        if not path.is_file():
            n = TOY_DEMO["demo_classes"]
            atomic_write_text(path, "".join(f"{c}\n" for c in class_names(2 * n)[n:]))
        return path

    def prepared(self, name: str) -> Path:
        """A shared data set (SHARED_SETS) prepared once under <work>/data/<name>; --quick: a toy stand-in
        (flowers102: `toy_data()`; cub100: `toy_data(other=True)`, whose classes differ)."""
        if self.quick:
            return self.toy_data(other=name != "flowers102")
        fmt, _, marker, options = SHARED_SETS[name]
        source, out = self.data_root(name), self.work / "data" / name
        if not (out / "dataset.yaml").is_file():
            if not (source / marker).is_file():
                raise RuntimeError(f"{source} is not the {name} layout ({marker} missing); give its folder with "
                                   f"--data {name.split('-')[0]}=PATH")
            run([*FGCLI, "prepare-data", fmt, str(source), "--out", str(out), *options],
                self.work / "data" / f"{name}.txt")
        return out


def summary_path(summaries: Path, table: str, row: str, seed: int) -> Path:
    return summaries / table / f"{row}-s{seed}.json"


def read_summary(path: Path) -> dict[str, Any] | None:
    """A run's summary, or None when it was not measured (or the file is not a summary: it is measured again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lookup(summaries: Path) -> Lookup:
    """(table, row, seed) -> that run's summary under `summaries`, or None."""
    return lambda table, row, seed: read_summary(summary_path(summaries, table, row, seed))


def fgcli_version() -> str:
    import subprocess

    from fgcli import __version__

    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    return f"{__version__} ({commit})" if commit else __version__


def describe_run(record: dict[str, Any], commands: list[str], share: CpuShare, seconds: float, threads: int,
                 quick: bool) -> dict[str, Any]:
    """A measurement's record with how it was measured added: the summary that is written."""
    load = share.other_load()
    return {**record, "quick": quick, "time_s": round(seconds, 1), "cpu": cpu_line(), "cpus": cpu_count(),
            "threads": threads, "other_load": None if load is None else round(load, 2),
            "cpu_shared": None if load is None else load >= SHARED_LOAD,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": commands,
            "fgcli": fgcli_version()}


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    from fgcli.io import atomic_write_text

    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")


def measured(fn: Callable[..., dict[str, Any]], *args: Any, threads: int, quick: bool) -> dict[str, Any]:
    """Run one measurement `fn(*args)` and return its summary (its record, the commands it ran, time, CPU,
    other work's load)."""
    share, start = CpuShare(), time.monotonic()
    with recording() as commands:
        record = fn(*args)
    return describe_run(record, commands, share, time.monotonic() - start, threads, quick)


def ensure(ctx: Context, table: str, row: str, seed: int, again: bool = False) -> dict[str, Any]:
    """The summary of (table, row, seed), measured first when it is missing, or when the run folder other tables
    reuse is gone (then it is measured again and its summary replaced, so that every table describes the same
    model); `again`: measured again in any case (what it reuses is not)."""
    entry = ctx.tables[table]
    if (table, row, seed) in ctx.failed:
        raise RuntimeError(f"{table}/{row} seed {seed} failed earlier: {ctx.failed[table, row, seed]}")
    path = summary_path(ctx.summaries, table, row, seed)
    summary = read_summary(path)
    if summary is not None and not again and (entry.artifact is None
                                              or entry.artifact(entry.row(row), seed, ctx).exists()):
        return summary
    spec = entry.row(row)
    for need_table, need_row in spec.needs:
        ensure(ctx, need_table, need_row, seed)
    if summary is not None:
        why = "as asked" if again else f"its run folder in {ctx.work} is gone"
        print(f"{table}/{row} seed {seed}: measured again ({why}); its summary is replaced", flush=True)
    try:
        summary = measured(entry.measure, spec, seed, ctx, threads=ctx.threads, quick=ctx.quick)
    except Exception as e:
        ctx.failed[table, row, seed] = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise
    summary = {"table": table, "row": row, "seed": seed, **summary}
    write_summary(path, summary)
    print(f"{table}/{row} seed {seed}: done ({summary['time_s'] / 60:.1f} min) -> {path}", flush=True)
    return summary


def measure_missing(ctx: Context, chosen: dict[str, list[Row]], again: bool = False,
                    report_only: bool = False) -> list[str]:
    """Measure every run of `chosen` ({table: its rows}) whose summary is missing (`again`: every run), each
    through `ensure` (what it reuses first); one failed run does not stop the others. `report_only`: measure
    nothing, say what is missing. Returns the failures, one line each."""
    failures = []
    for name, rows in chosen.items():
        for row in rows:
            for seed in row.seeds:
                if summary_path(ctx.summaries, name, row.name, seed).is_file() and not again:
                    continue
                if report_only:
                    print(f"not measured yet: {name}/{row.name} seed {seed}")
                    continue
                try:
                    ensure(ctx, name, row.name, seed, again)
                except Exception as e:  # one failed run must not stop the others
                    failures.append(f"{name}/{row.name} seed {seed}: {type(e).__name__}: {e}")
                    print(f"FAILED {name}/{row.name} seed {seed}", flush=True)
    return failures


def measure_to(path: Path, key: dict[str, Any], failures: list[str], fn: Callable[..., dict[str, Any]], *args: Any,
               threads: int, quick: bool) -> dict[str, Any] | None:
    """A standalone script's run: measure `fn(*args)` and write its summary (`key`: table, row, seed) to `path`;
    a failure goes to `failures` ('<row>: error') and gives None."""
    label = f"{key['row']}" + ("" if key.get("seed") is None else f" seed {key['seed']}")
    try:
        summary = measured(fn, *args, threads=threads, quick=quick)
    except RuntimeError as e:
        failures.append(f"{label}: {e}")
        print(f"FAILED {label}", flush=True)
        return None
    summary = {**key, **summary}
    write_summary(path, summary)
    return summary


def exit_if_failed(failures: list[str]) -> None:
    """A standalone script prints no table when a run failed: exit 1 with the failures."""
    if failures:
        sys.exit("no table: some runs failed\n" + "\n".join(failures))


# -- what a run leaves -----------------------------------------------------------------------------------------
@dataclass
class Trained:
    """A trained run and its test-split evaluation: `history` (results.csv rows), `test` (metrics.json)."""

    run_dir: Path
    history: list[dict[str, str]]
    test: dict[str, Any]

    @property
    def best(self) -> Path:
        return self.run_dir / "weights" / "best.pt"

    @property
    def chosen(self) -> dict[str, str]:
        """The epoch best.pt holds (chosen on val; the first of equals)."""
        return max(self.history, key=lambda r: float(r["val/top1"]))

    def val(self) -> dict[str, Any]:
        return {"top1": float(self.chosen["val/top1"]), "best_epoch": int(self.chosen["epoch"])}

    def train(self) -> dict[str, Any]:
        """Training time (validation included), epochs and mean training img/s."""
        return {"time_s": sum(float(r["epoch_time"]) for r in self.history), "epochs": len(self.history),
                "img_s": statistics.mean(float(r["train_img_s"]) for r in self.history)}


def train_and_test(command: list[str], work: Path, name: str, data: Path | None) -> Trained:
    """`fgcli --quiet COMMAND` (a train or distill command) into <work>/runs/<name>, then `fgcli eval best.pt
    --split test` (on `data`; None: the run's own); logs under <work>/logs."""
    from fgcli.engine.rundir import read_results_csv

    run_dir = work / "runs" / name
    train([*FGCLI, *command, "--project", str(work / "runs"), "--name", name, "--exist-ok"], run_dir,
          work / "logs" / f"{name}.txt")
    out = work / "eval" / f"{name}-test"
    run([*FGCLI, "eval", str(run_dir / "weights" / "best.pt"), *(["--data", str(data)] if data else []),
         "--split", "test", "--device", "cpu", "--out", str(out)], work / "logs" / f"{name}-test.txt")
    return Trained(run_dir, read_results_csv(run_dir / "results.csv"), json.loads((out / "metrics.json").read_text()))


def trained_on(checkpoint: Path) -> Path:
    """The prepared data set a checkpoint was trained on."""
    return Path(load_checkpoint(checkpoint)["dataset"]["root"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# -- markdown ------------------------------------------------------------------------------------------------
def spread(values: list[float], digits: int = 2) -> str:
    """'mean' for one value, 'mean (min-max)' for several."""
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def runs_of(row: Row, get: Lookup, table: str) -> list[dict[str, Any]] | None:
    """The summaries of every seed of `row`, or None when any is missing (the row then reads `missing`)."""
    found = [get(table, row.name, seed) for seed in row.seeds]
    return None if any(s is None for s in found) else found  # type: ignore[return-value]


def missing_row(label: str, columns: int, seeds: list[int] | tuple[int, ...] = ()) -> str:
    """A row whose summaries are not all there: its first cell reads `missing` (with the seeds that are, when
    only some are), the others stay empty."""
    first = f"{MISSING} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if seeds else MISSING
    return "| " + " | ".join([label, first, *[""] * (columns - 1)]) + " |"


def missing_seeds(row: Row, get: Lookup, table: str) -> list[int]:
    """The seeds of `row` without a summary, when some of its seeds have one (else [])."""
    gone = [seed for seed in row.seeds if get(table, row.name, seed) is None]
    return gone if len(gone) < len(row.seeds) else []


def caption_row(text: str, columns: int) -> str:
    return "| " + " | ".join([text, *[""] * columns]) + " |"


def captioned(rows: list[Row], caption: Callable[[Row], str]) -> list[Row]:
    """The rows, each first of a run of rows with the same `caption(row)` captioned with it (a row above it)."""
    import dataclasses

    out: list[Row] = []
    for row in rows:
        text = caption(row)
        out.append(dataclasses.replace(row, before=None if out and caption(out[-1]) == text else text))
    return out


def measured_rows(rows: list[Row], get: Lookup, table: str, columns: int,
                  lines: list[str]) -> Iterator[tuple[Row, list[dict[str, Any]]]]:
    """Each row whose seeds are all measured, with their summaries; on the way, a row's caption and the
    `missing` line of a row not measured go to `lines` (`columns`: the table's, less the first)."""
    for row in rows:
        if row.before:
            lines.append(caption_row(row.before, columns))
        runs = runs_of(row, get, table)
        if runs is None:
            lines.append(missing_row(row.label, columns, missing_seeds(row, get, table)))
        else:
            yield row, runs


def regenerate_command(name: str, quick: bool = False) -> str:
    return f"python benchmarks/readme_results.py --tables {name}{' --quick' if quick else ''}"


def measured_line(command: str, runs: str, summaries: list[dict[str, Any]]) -> str:
    """The line under a table: the command, the dates, the CPU and its flags, threads, and whether other work
    shared the CPU, from the summaries the table was built from."""
    command = f"`{command}` ({runs})"
    if not summaries:
        return f"{command}: not measured yet."
    dates = sorted(s["date"][:10] for s in summaries)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    machines = sorted({f"{s['cpu']}, {s['cpus']} CPUs" for s in summaries})
    threads = sorted({int(s["threads"]) for s in summaries})
    per_run = f"{threads[0]}" if len(threads) == 1 else f"{threads[0]}-{threads[-1]}"
    known = [s for s in summaries if s.get("cpu_shared") is not None]
    shared = sum(bool(s["cpu_shared"]) for s in known)
    if not known:
        sharing = "whether other work shared the CPU was not measured"
    elif shared == 0:
        sharing = f"no other work shared the CPU ({len(known)} runs)"
    else:
        sharing = f"other work shared the CPU during {shared} of {len(known)} runs (times are upper bounds)"
    return (f"{command}: measured {when} on {'; '.join(machines)}, {per_run} thread{'s' if per_run != '1' else ''} "
            f"per run; {sharing}.")


def table_summaries(table: Table, rows: list[Row], get: Lookup) -> list[dict[str, Any]]:
    """The summaries of the rows the table prints (those with every seed measured), for the line under it."""
    return [s for row in rows for s in runs_of(row, get, table.name) or []]


def report(table: Table, rows: list[Row], get: Lookup, command: str) -> str:
    """The table in the README's markdown, and the line under it (`command`: what regenerates it)."""
    lines = table.render(rows, get)
    return "\n".join([*lines, "", measured_line(command, table.runs, table_summaries(table, rows, get))])


# -- standalone table scripts ---------------------------------------------------------------------------------
#: data set -> the option of a standalone script that gives its folder
DATA_OPTIONS = {"flowers102": ("--flowers102", "the flowers102 root (official layout)"),
                "cub100": ("--cub", "the cub100 CUB_200_2011 folder")}


def script_parser(doc: str, quick: str, data: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The options every standalone table script shares: --work, --quick (`quick`: what it does), --report, and
    the folders of the shared data sets it uses (`data`: DATA_OPTIONS keys; default ../shared/data)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="prepared data, run folders, reports and per-run summaries (reused)")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--report", action="store_true", help="print the table of what is measured; measure nothing")
    for name in data:
        flag, what = DATA_OPTIONS[name]
        parser.add_argument(flag, dest=f"data_{name}", metavar="PATH", type=Path, default=None, help=what)
    return parser


def script_context(args: argparse.Namespace, *tables: Table, threads: int | None = None) -> Context:
    """A standalone script's context from its options: everything under --work (a new temp folder when not
    given), summaries in <work>/results; `tables`: its own and those whose runs it reuses."""
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix=f"fgcli-{tables[0].name}-"))
    data = {name: getattr(args, f"data_{name}") for name in DATA_OPTIONS if getattr(args, f"data_{name}", None)}
    return Context(work=work, summaries=work / "results", quick=args.quick, threads=threads or threads_in_use(),
                   tables={t.name: t for t in tables}, data=data)


def run_script(ctx: Context, rows: list[Row], again: bool = False, report_only: bool = False,
               note: str = "") -> None:
    """A standalone script's measurement of `rows` of its table (the first of the context's): what is missing
    (`again`: all), then `note` and the table with the line under it; no table and exit 1 when a run failed."""
    table = next(iter(ctx.tables.values()))
    exit_if_failed(measure_missing(ctx, {table.name: rows}, again=again, report_only=report_only))
    if note:
        print(f"\n{note}")
    print(report(table, rows, lookup(ctx.summaries), script_command()))


def script_command() -> str:
    """How a standalone benchmark script was called (for the line under its table)."""
    import shlex

    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def threads_in_use() -> int:
    """The thread count the fgcli commands of a standalone script run with (OMP_NUM_THREADS, else the CPUs)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else cpu_count()
