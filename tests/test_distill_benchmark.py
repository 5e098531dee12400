"""benchmarks/distill_results.py: the commands and recipes of each row, the runs it reuses from the flowers102
table, the fastest CPU path, the table and the verdict, resuming from saved runs, no table on failure, and
--quick end to end at toy scale."""

from __future__ import annotations

import json
import sys

import pytest
from benchkit import load_benchmark

BENCH_CSV = """backend,device,batch,img_size,threads,iters,p50_ms,p90_ms,mean_ms,throughput,precision,agreement,max_dprob
torch,torch cpu,1,128,2,20,9.5000,9.9,9.6,104.1,fp32,100.0000,0.000e+00
onnx,onnxruntime CPUExecutionProvider,1,128,2,20,4.2500,4.5,4.3,232.5,fp32,100.0000,2.980e-08
openvino,onnxruntime OpenVINOExecutionProvider (fp32),1,128,2,20,3.7500,3.9,3.8,263.1,fp32,100.0000,2.980e-08
onnx,onnxruntime CPUExecutionProvider,8,128,2,20,1.0000,1.2,1.1,909.0,fp32,100.0000,2.980e-08
"""


@pytest.fixture()
def bench():
    return load_benchmark("distill_results")


def _summary(row: str, seed: int, test: float, latency: float = 4.0, method: str = "baseline",
             fastest: str = "onnx onnxruntime CPUExecutionProvider fp32") -> dict:
    paths = {"torch torch cpu fp32": 2 * latency, fastest: latency}
    return {"table": "distill", "row": row, "seed": seed,
            "config": {"method": method, "backbone": "tf_efficientnet_lite0"}, "val": {"top1": test + 1},
            "test": {"top1": test}, "train": {"time_s": 600.0}, "latency_ms": latency,
            "latency": {"path": "onnx CPU fp32", "paths": paths}, "time_s": 700.0, "cpu": "CPU", "cpus": 2, "threads": 1,
            "cpu_shared": False, "date": "2025-03-01T10:00:00+00:00", "command": ["fgcli --quiet train ..."]}


def _lookup(summaries: list[dict]):
    return lambda table, row, seed: next((s for s in summaries if (s["row"], s["seed"]) == (row, seed)), None)


def test_the_fastest_batch_1_path_is_taken(bench) -> None:
    fastest = bench.fastest(BENCH_CSV)  # the batch-8 row is faster per call but not a batch-1 latency
    assert fastest["latency_ms"] == 3.75 and fastest["path"] == "openvino OpenVINO fp32"
    assert fastest["threads"] == 2 and fastest["img_size"] == 128 and len(fastest["paths"]) == 3


def test_the_flowers102_runs_are_reused_and_the_student_has_the_same_budget_alone_and_distilled(bench) -> None:
    plan = bench.Plan()
    rows = {r.name: r for r in plan.rows(False)}
    assert rows["flowers102-teacher"].needs == (("flowers102", "herbs"),)
    assert rows["flowers102-alone"].needs == (("flowers102", "baseline"),)
    assert rows["flowers102-linear_probe"].needs == (("flowers102", "linear_probe"),)
    assert rows["flowers102-distilled"].needs == (("flowers102", "herbs"),)  # its teacher
    assert rows["cub100-teacher"].needs == () and rows["cub100-distilled"].needs == (("distill", "cub100-teacher"),)
    assert [r.before for r in plan.rows(False)].count(None) == 6  # one caption per data set
    for quick in (False, True):
        assert plan.recipe("distilled", quick) == plan.recipe("alone", quick) == (
            "baseline_lite0_128", bench.f102.overrides([], quick))  # the flowers102 table's baseline run
    changed = bench.Plan(teacher_sets=("train.epochs=14",), distill_sets=("distill.temperature=4",))
    assert changed.reused("flowers102", "teacher") is None  # another teacher: trained here
    assert {r.name: r for r in changed.rows(False)}["flowers102-distilled"].needs == (("distill", "flowers102-teacher"),)
    assert changed.recipe("teacher", False) == ("herbs_lite0_128", ["train.epochs=14"])
    assert changed.recipe("distilled", False) == ("baseline_lite0_128", ["distill.temperature=4"])
    assert changed.recipe("alone", False) == ("baseline_lite0_128", [])


def test_only_the_distilled_row_has_a_teacher(bench, tmp_path) -> None:
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"")
    distilled = bench.train_command("distilled", tmp_path / "d", 1, "baseline_lite0_128", ["distill.alpha=0.7"],
                                    teacher)
    alone = bench.train_command("alone", tmp_path / "d", 1, "baseline_lite0_128", [], None)
    assert distilled[:2] == ["distill", str(teacher)] and alone[0] == "train"
    assert distilled[distilled.index("--recipe") + 1] == alone[alone.index("--recipe") + 1] == "baseline_lite0_128"
    assert "distill.alpha=0.7" in distilled and distilled[distilled.index("--seed") + 1] == "1"
    with pytest.raises(RuntimeError, match="the teacher .* is missing"):
        bench.train_command("distilled", tmp_path / "d", 1, "baseline_lite0_128", [], tmp_path / "none.pt")


def test_a_reused_row_is_benched_not_trained_and_keeps_the_other_tables_numbers(bench, tmp_path,
                                                                                  monkeypatch) -> None:
    ctx = bench.Context(work=tmp_path, summaries=tmp_path / "results",
                        tables={t.name: t for t in (bench.make_table(), bench.f102.TABLE)})
    source = {**_summary("herbs", 0, 82.0, method="herbs"), "table": "flowers102",
              "command": ["fgcli --quiet prepare-data flowers102 ...", "fgcli --quiet train --recipe herbs_lite0_128",
                          "fgcli --quiet eval ..."]}
    saved = tmp_path / "results" / "flowers102" / "herbs-s0.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps(source))
    benched = []
    monkeypatch.setattr(bench, "train_and_test", lambda *a, **k: pytest.fail("a reused run is not trained again"))
    monkeypatch.setattr(bench, "latency", lambda best, name, ctx: benched.append(best) or {"latency_ms": 3.0,
                                                                                            "latency": {}})
    monkeypatch.setattr(bench, "load_checkpoint", lambda path: {"method": "herbs", "backbone": "tf_efficientnet_lite0"})
    summary = bench.measure(bench.Plan(), bench.TABLES[0].row("flowers102-teacher"), 0, ctx)
    assert benched == [tmp_path / "flowers102" / "runs" / "herbs-s0" / "weights" / "best.pt"]
    assert summary["test"] == {"top1": 82.0} and summary["val"] == {"top1": 83.0} and summary["latency_ms"] == 3.0
    assert summary["config"]["reused"] == "flowers102/herbs-s0"
    assert summary["config"]["trained_by"] == ["fgcli --quiet train --recipe herbs_lite0_128"]


def test_the_claim_needs_every_seed_above_the_student_alone(bench) -> None:
    assert bench.verdict("cub100", [71.0, 72.0, 73.0], [68.0, 70.5, 69.0]).startswith(
        "cub100: the distilled student beats the student alone: +2.83")
    assert bench.verdict("cub100", [71.0, 72.0, 73.0], [68.0, 71.5, 69.0]).startswith(
        "cub100: not shown: +2.50 points on the mean, within the seed")
    assert "not shown (one seed)" in bench.verdict("cub100", [71.0], [68.0])
    assert "no verdict" in bench.verdict("cub100", [71.0, 72.0], None)


def test_table_rows(bench) -> None:
    rows = [r for r in bench.Plan().rows(False) if r.name.startswith("flowers102")]
    get = _lookup([_summary("flowers102-teacher", s, 83.0 + 2 * s, 12.0 + 2 * s, "herbs") for s in (0, 1, 2)]
                  + [_summary("flowers102-distilled", s, 80.0 + s, fastest=path)
                     for s, path in enumerate(["openvino openvino CPU (bf16) bf16"] * 2
                                              + ["onnx onnxruntime OpenVINOExecutionProvider (bf16) bf16"])]
                  + [_summary("flowers102-alone", s, 76.0 + s) for s in (0, 1, 2)]
                  + [_summary("flowers102-linear_probe", 0, 70.0)])
    lines = bench.table(rows, get)
    assert lines[2] == "| **flowers102** (official splits) |  |  |  |  |  |"
    assert lines[3] == ("| teacher (`herbs_lite0_128`): herbs (tf_efficientnet_lite0) | 3 | 86.00 (84.00-88.00) | "
                        "85.00 (83.00-87.00) | 14.00 ms (onnxruntime CPU fp32) | 10.0 min |")
    assert lines[4].startswith("| student, distilled (`baseline_lite0_128`): baseline (tf_efficientnet_lite0) | 3 |")
    assert "| 4.00 ms (OpenVINO runtime bf16 ×2, onnxruntime + OpenVINO EP bf16 ×1) |" in lines[4]
    assert lines[6] == "| linear probe (`linear_probe_lite0_128`) | missing (seeds 1, 2) |  |  |  |  |"
    assert all(line.count("|") == lines[0].count("|") for line in lines[:7])
    assert lines[7:] == ["", "flowers102: the distilled student beats the student alone: +4.00 points on the mean, "
                             "every seed (80.00 lowest) above the best of the student alone (78.00); 3 / 3 seeds"]


def test_saved_runs_are_reused_and_a_failed_run_means_no_table(bench, tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "work"
    saved = work / "results" / "distill" / "cub100-teacher-s0.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps(_summary("cub100-teacher", 0, 80.0, method="herbs")))
    teacher = work / "distill" / "runs" / "cub100-teacher-s0" / "weights" / "best.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"")  # the distilled row's teacher is there: not trained again
    calls = []

    def fake(plan, row, seed, ctx):
        calls.append(row.name)
        if row.name == "cub100-alone":
            raise RuntimeError("exit 1: boom")
        return _summary(row.name, seed, 70.0)

    monkeypatch.setattr(bench, "measure", fake)
    with pytest.raises(SystemExit, match="no table: some runs failed\ndistill/cub100-alone seed 0: RuntimeError: "
                                         "exit 1: boom"):
        bench.main(["--work", str(work), "--data", "cub100", "--seeds", "0"])
    assert calls == ["cub100-distilled", "cub100-alone", "cub100-linear_probe"]  # the teacher came from its summary
    assert "| model |" not in capsys.readouterr().out
    assert (work / "results" / "distill" / "cub100-distilled-s0.json").is_file()  # kept for the next call


@pytest.mark.slow
def test_quick_mode_end_to_end(bench, tmp_path, capsys, monkeypatch) -> None:
    """--quick on the flowers102 stand-in: the flowers102 table's toy teacher, student alone and probe trained once
    and reused, the distilled student trained from that teacher, each benched through the CLI; a second call
    prints the table from the saved summaries without running anything (about 2 minutes)."""
    work = tmp_path / "work"
    bench.main(["--quick", "--work", str(work), "--data", "flowers102"])
    out = capsys.readouterr().out
    assert "| student, distilled (`baseline_lite0_128`): baseline (test_resnet) | 1 |" in out
    assert "| teacher (`herbs_lite0_128`): herbs (test_resnet) | 1 |" in out
    assert "flowers102: distilled - alone = " in out and "not shown (one seed)" in out
    distilled = json.loads((work / "results" / "distill" / "flowers102-distilled-s0.json").read_text())
    assert distilled["distill"]["method"] == "herbs" and distilled["distill"]["backbone"] == "test_resnet"
    assert distilled["distill"]["teacher"] == str(work / "flowers102" / "runs" / "herbs-s0-quick" / "weights" / "best.pt")
    assert distilled["latency_ms"] > 0 and distilled["latency"]["path"] and distilled["val"]["top1"] >= 0
    assert distilled["command"][0].startswith("fgcli --quiet distill ") and len(distilled["command"]) == 3
    alone = json.loads((work / "results" / "distill" / "flowers102-alone-s0.json").read_text())
    trained = json.loads((work / "results" / "flowers102" / "baseline-s0.json").read_text())
    assert alone["config"]["reused"] == "flowers102/baseline-s0" and alone["test"] == trained["test"]
    assert [c.split()[2] for c in alone["command"]] == ["bench"]  # not trained again
    assert set(distilled["config"]["sets"]) == set(trained["config"]["sets"])  # the same budget

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should run again")

    for module in (bench, sys.modules["_cli"], sys.modules["_results"], sys.modules["flowers102_results"]):
        monkeypatch.setattr(module, "run", refuse)
    bench.main(["--quick", "--work", str(work), "--data", "flowers102"])
    assert capsys.readouterr().out.count("(test_resnet) | 1 |") == 4
