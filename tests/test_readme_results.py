"""benchmarks/readme_results.py: every README results table built from per-run summaries alone (a missing one
reads `missing`), the list of runs, resuming and re-measuring what other tables reuse, the machine line, and a
--quick run through the real CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from benchkit import BENCHMARKS
from benchkit import load_benchmark as _load


@pytest.fixture(scope="module")
def rr():
    return _load("readme_results")


@pytest.fixture(scope="module")
def results():
    return _load("_results")


def _meta(day: int, shared: bool) -> dict:
    return {"time_s": 600.0, "cpu": "Test CPU (AVX2)", "cpus": 2, "threads": 1, "other_load": 0.9 if shared else 0.0,
            "cpu_shared": shared, "date": f"2025-03-0{day}T10:00:00+00:00", "command": ["fgcli train ..."],
            "quick": False}


def _demo_summaries(folder: Path) -> None:
    """The demo table's 15 runs: test top-1 = 80 + 2 * method index + seed, val 1 point above; seed 4 shared."""
    for m, method in enumerate(("baseline", "herbs", "mge")):
        for seed in range(5):
            top1 = 80.0 + 2 * m + seed
            summary = {"table": "demo", "row": method, "seed": seed,
                       "config": {"method": method, "recipe": f"{method}_demo_cpu"},
                       "val": {"top1": top1 + 1}, "test": {"top1": top1},
                       "train": {"time_s": 60.0 * (m + 1), "epochs": 6}, **_meta(1 + seed % 3, seed == 4)}
            path = folder / "demo" / f"{method}-s{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary))


def _report(rr, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["readme_results.py", *args])
    rr.main()
    return capsys.readouterr().out


def test_report_builds_a_table_from_summaries_alone_and_a_missing_one_reads_missing(rr, tmp_path, monkeypatch,
                                                                                     capsys):
    _demo_summaries(tmp_path)
    out = _report(rr, monkeypatch, capsys, "--report", "--tables", "demo", "--summaries", str(tmp_path))
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | recipe | seeds | best val top-1 % | fused test top-1 % | training time |"
    assert lines[2] == "| baseline | `baseline_demo_cpu` | 5 | 83.0 (81.0-85.0) | 82.0 (80.0-84.0) | 1.0 min |"
    assert lines[3] == "| HERBS | `herbs_demo_cpu` | 5 | 85.0 (83.0-87.0) | 84.0 (82.0-86.0) | 2.0 min |"
    assert len(lines) == 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert ("`python benchmarks/readme_results.py --tables demo` (each run: `fgcli train --method M --data demo "
            "--seed S`, then `fgcli eval RUN/weights/best.pt`): measured 2025-03-01 to 2025-03-03 on Test CPU "
            "(AVX2), 2 CPUs, 1 thread per run; other work shared the CPU during 3 of 15 runs") in out

    (tmp_path / "demo" / "herbs-s3.json").unlink()
    out = _report(rr, monkeypatch, capsys, "--report", "--tables", "demo", "--summaries", str(tmp_path))
    assert "| HERBS | missing (seed 3) |  |  |  |  |" in out.splitlines()
    assert "| baseline | `baseline_demo_cpu` | 5 | 83.0 (81.0-85.0) |" in out  # the other rows are unchanged
    assert "during 2 of 10 runs" in out  # the line describes the rows shown


def test_every_table_prints_its_rows_as_missing_before_anything_is_measured(rr, results, tmp_path, monkeypatch,
                                                                           capsys):
    tables = rr.all_tables()
    assert list(tables) == ["demo", "demo_choices", "flowers102", "cub100", "flowers12", "calibration", "int8", "speed", "speed_random",
                            "train_speed", "distill", "ood", "tune"]
    out = _report(rr, monkeypatch, capsys, "--report", "--summaries", str(tmp_path))
    for name, table in tables.items():
        section = out.split(f'<!-- {name}: README "{table.title}" -->\n', 1)[1].split("\n\n", 1)[0].splitlines()
        header, rows = section[:2], section[2:]
        labels = [r.label for r in table.rows(False)]
        assert [row.split(" | ")[0][2:] for row in rows if "missing" in row] == labels, name
        assert all(line.count("|") == header[0].count("|") for line in section), name
        assert f"`python benchmarks/readme_results.py --tables {name}` (" in out
    assert out.count(": not measured yet.") == len(tables)
    # the README's seeds: 5 for the demo, 3 for the shipped baseline / HERBS recipes on flowers102
    assert tables["demo"].row("herbs").seeds == (0, 1, 2, 3, 4)
    assert tables["flowers102"].row("baseline").seeds == (0, 1, 2)
    assert tables["distill"].row("cub100-distilled").seeds == (0, 1, 2)
    # a run of the same recipe, data and seed is reused, never trained twice
    assert tables["distill"].row("flowers102-alone").needs == (("flowers102", "baseline"),)
    assert tables["distill"].row("flowers102-distilled").needs == (("flowers102", "herbs"),)
    assert tables["ood"].row("cub100-herbs_lite0_128").needs == (("distill", "cub100-teacher"),)
    assert tables["ood"].row("cub80-herbs_lite0_128").needs == ()


def test_list_gives_rows_seeds_and_cpu_time(rr, tmp_path, monkeypatch, capsys):
    _demo_summaries(tmp_path)
    (tmp_path / "demo" / "mge-s4.json").unlink()
    out = _report(rr, monkeypatch, capsys, "--list", "--tables", "demo,flowers102/herbs,int8",
                  "--summaries", str(tmp_path))
    assert "demo: README \"The demo (CPU)\", 15 runs, 14 measured, ≈ 0.2 h of CPU left" in out  # one 10-min run
    assert "mge                      seeds 0,1,2,3,4  measured 4/5  ≈ 10.0 min per run" in out
    assert "flowers102: README" in out and "herbs                    seeds 0,1,2      measured 0/3  ≈ 14.0 min" in out
    assert "flowers102/baseline" not in out.split("flowers102: README")[1].split("int8:")[0]  # only the chosen row
    assert "int8: README \"int8 on real models\", 9 runs, 0 measured, CPU time left unknown" in out
    assert "(uses flowers102/herbs)" in out


@pytest.mark.parametrize("tables,message", [("demo,nope", "--tables nope: no table nope"),
                                            ("flowers102/nope", "--tables flowers102/nope: flowers102 has no row")])
def test_an_unknown_table_or_row_is_one_line(rr, tmp_path, monkeypatch, capsys, tables, message):
    with pytest.raises(SystemExit, match=message):
        _report(rr, monkeypatch, capsys, "--report", "--tables", tables, "--summaries", str(tmp_path))


def test_ensure_resumes_and_measures_again_what_other_tables_reuse_when_it_is_gone(results, tmp_path):
    """A summary is enough to skip a run, unless another table needs its run folder and that is gone: then it is
    measured again (its summary replaced). A run that failed is not tried again in the same call."""
    calls = []

    def train(row, seed, ctx):
        calls.append(("train", row.name, seed))
        if row.name == "bad":
            raise RuntimeError("exit 1: boom")
        (ctx.work / f"{row.name}-{seed}.pt").write_text("weights")
        return {"config": {}, "val": {"top1": 50.0}, "test": {"top1": 40.0 + len(calls)}}

    def use(row, seed, ctx):
        calls.append(("use", row.name, seed))
        return {"config": {"from": str(ctx.artifact("train", row.needs[0][1], seed))}, "val": {}, "test": {}}

    Row, Table = results.Row, results.Table
    trained = Table("train", "T", "r", lambda q: [Row("a", "A"), Row("bad", "B")], train, lambda rows, get: [],
                    lambda row, seed, ctx: ctx.work / f"{row.name}-{seed}.pt")
    user = Table("use", "U", "r", lambda q: [Row("x", "X", needs=(("train", "a"),)),
                                        Row("y", "Y", needs=(("train", "bad"),))],
                 use, lambda rows, get: [])
    ctx = results.Context(work=tmp_path, summaries=tmp_path / "s", tables={"train": trained, "use": user})
    first = results.ensure(ctx, "use", "x", 0)
    assert calls == [("train", "a", 0), ("use", "x", 0)] and first["config"]["from"].endswith("a-0.pt")
    assert results.ensure(ctx, "use", "x", 0) == first and len(calls) == 2  # resumed: nothing measured
    saved = results.read_summary(tmp_path / "s" / "train" / "a-s0.json")
    assert saved["test"]["top1"] == 41.0 and saved["threads"] == 1 and saved["cpu"] and "date" in saved

    (tmp_path / "a-0.pt").unlink()  # the run folder is gone: use/y needs it, so train/a is measured again
    (tmp_path / "s" / "use" / "x-s0.json").unlink()
    results.ensure(ctx, "use", "x", 0)
    assert calls[2:] == [("train", "a", 0), ("use", "x", 0)]
    assert results.read_summary(tmp_path / "s" / "train" / "a-s0.json")["test"]["top1"] == 43.0

    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            results.ensure(ctx, "use", "y", 0)
    assert calls.count(("train", "bad", 0)) == 1 and ("use", "y", 0) not in calls
    assert not (tmp_path / "s" / "use" / "y-s0.json").exists()


def test_cpu_line_names_the_model_and_its_kernel_flags(tmp_path):
    machine = _load("_machine")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu sse2 avx2 fma\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu sse2 avx2 fma\n")
    assert machine.cpu_line(info) == "AMD EPYC 7B13 64-Core Processor (AVX2)"
    info.write_text("model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t: avx2 avx512f avx512_bf16 amx_bf16 "
                    "amx_tile\n")
    assert machine.cpu_line(info) == "Intel(R) Xeon(R) Platinum 8481C (AVX2, AVX-512, AVX512-BF16, AMX-BF16)"
    info.write_text("model name\t: Old CPU\nflags\t: sse2\n")
    assert machine.cpu_line(info) == "Old CPU (no AVX2)"


def test_cpu_share_counts_only_other_work_on_this_process_cpus(tmp_path, monkeypatch):
    """Busy jiffies of the allowed CPUs minus this process's own CPU time, over the wall time."""
    machine = _load("_machine")
    hz = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"

    def write(busy0: int, busy1: int, busy9: int) -> None:  # user nice system idle iowait irq softirq steal
        stat.write_text(f"cpu  {busy0 + busy1 + busy9} 0 0 999 0 0 0 0 0 0\n"
                        f"cpu0 {busy0} 0 0 500 7 0 0 0 0 0\ncpu1 {busy1} 0 0 499 0 0 0 0 0 0\n"
                        f"cpu9 {busy9} 0 0 0 0 0 0 0 0 0\n")

    clock, own = iter([100.0, 110.0]), iter([5.0, 12.0])
    monkeypatch.setattr(machine, "monotonic", lambda: next(clock))
    monkeypatch.setattr(machine, "_own_seconds", lambda: next(own))
    write(0, 0, 0)
    share = machine.CpuShare(stat, cpus={0, 1})
    write(10 * hz, 12 * hz, 50 * hz)  # 22 s busy on CPUs 0-1 in 10 s, 7 s of it ours; CPU 9 is not ours
    assert share.other_load() == pytest.approx(1.5)


def test_quick_run_of_a_subset_through_the_cli(tmp_path):
    """--quick at toy scale on one row: it trains and evaluates through fgcli, writes its summary under the work
    folder (never benchmarks/results), prints the table, and a second call resumes from the summary."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(BENCHMARKS / "readme_results.py"), "--quick", "--work", str(tmp_path),
           "--tables", "demo/baseline"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((tmp_path / "quick" / "results" / "demo" / "baseline-s0.json").read_text())
    assert summary["quick"] and summary["config"]["recipe"] == "baseline_demo_cpu"
    assert "model.backbone=test_resnet" in summary["config"]["sets"]
    assert summary["command"][0].startswith("fgcli --quiet train --method baseline --data demo --seed 0")
    assert 0 <= summary["test"]["top1"] <= 100 and summary["threads"] == 1 and summary["cpu_shared"] in (True, False)
    table = [line for line in first.stdout.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| baseline | `baseline_demo_cpu` | 1 | ")
    assert table[2:] == ["| HERBS | missing |  |  |  |  |", "| MGE-CNN | missing |  |  |  |  |"]
    assert "`python benchmarks/readme_results.py --tables demo --quick`" in first.stdout

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "fgcli --quiet train" not in again.stdout  # resumed from the summary
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == table

    # a summary that is gone, of a run that finished: the run folder is kept, not trained again
    summary_file = tmp_path / "quick" / "results" / "demo" / "baseline-s0.json"
    summary_file.unlink()
    kept = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert kept.returncode == 0 and "kept: " in kept.stdout and "fgcli --quiet train" not in kept.stdout, kept.stdout

    # a run stopped by a session's end (here: one epoch more to go) continues from its last.pt
    import torch

    run_dir = tmp_path / "quick" / "demo" / "runs" / "baseline-s0"
    last = run_dir / "weights" / "last.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["config"]["train"]["epochs"] = int(ckpt["epoch"]) + 1
    torch.save(ckpt, last)
    summary_file.unlink()
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"train --resume {run_dir}" in resumed.stdout
    assert len((run_dir / "results.csv").read_text().strip().splitlines()) == 1 + int(ckpt["epoch"]) + 1
    assert json.loads(summary_file.read_text())["val"]["best_epoch"] >= 1


@pytest.mark.slow
def test_quick_run_of_every_kind_of_table(tmp_path):
    """--quick through a row of each table kind that reuses another's run: flowers12 (trained), calibration (of
    that run), int8 and speed (of a flowers102 run), speed_random; then --report prints the same tables."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tables = "flowers12/baseline,calibration/flowers12-baseline,int8/baseline,speed/baseline,speed_random/baseline"
    cmd = [sys.executable, str(BENCHMARKS / "readme_results.py"), "--quick", "--work", str(tmp_path),
           "--tables", tables]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    saved = {p.relative_to(tmp_path / "quick" / "results").as_posix()
             for p in (tmp_path / "quick" / "results").rglob("*.json")}
    assert saved == {"flowers12/baseline-s0.json", "calibration/flowers12-baseline-s0.json",
                     "flowers102/baseline-s0.json", "int8/baseline-s0.json", "speed/baseline-s0.json",
                     "speed_random/baseline-s0.json"}
    measured = [line for line in run.stdout.splitlines() if line.startswith("| ") and "missing" not in line]
    assert any(line.startswith("| baseline (`baseline_lite0_128`) | onnxruntime CPU |") for line in measured)
    speed_row = next(line for line in measured if line.startswith("| baseline (`baseline_lite0_128`) | 8 |"))
    # the speed-up, then torch eager's and the fastest path's GFLOP/s (and share of the peak where the clock is known)
    assert re.search(r"\| [\d.]+× \| [\d.]+( \([\d.]+ %\))? \| [\d.]+( \([\d.]+ %\))? \|", speed_row), speed_row
    assert any(line.startswith("| flowers12, baseline (") for line in measured)
    report = subprocess.run([*cmd, "--report"], capture_output=True, text=True, env=env, timeout=120)
    tables_of = [line for line in run.stdout.splitlines() if line.startswith(("| ", "<!--", "`python"))]
    assert [line for line in report.stdout.splitlines() if line.startswith(("| ", "<!--", "`python"))] == tables_of
