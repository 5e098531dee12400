"""benchmarks/distill_results.py: the commands of each row, the fastest CPU path, the table and the verdict, resuming
from saved runs, no table on failure, and --quick end to end at toy scale."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "distill_results.py"

BENCH_CSV = """backend,device,batch,img_size,threads,iters,p50_ms,p90_ms,mean_ms,throughput,precision,agreement,max_dprob
torch,torch cpu,1,128,2,20,9.5000,9.9,9.6,104.1,fp32,100.0000,0.000e+00
onnx,onnxruntime CPUExecutionProvider,1,128,2,20,4.2500,4.5,4.3,232.5,fp32,100.0000,2.980e-08
openvino,onnxruntime OpenVINOExecutionProvider (fp32),1,128,2,20,3.7500,3.9,3.8,263.1,fp32,100.0000,2.980e-08
onnx,onnxruntime CPUExecutionProvider,8,128,2,20,1.0000,1.2,1.1,909.0,fp32,100.0000,2.980e-08
"""


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("distill_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(data: str, row: str, seed: int, test: float, latency: float = 4.0) -> dict:
    return {"table": "distill", "row": f"{data}-{row}", "seed": seed, "data": data, "model": row,
            "config": {"method": "herbs" if row == "teacher" else "baseline", "backbone": "tf_efficientnet_lite0"},
            "val": {"top1": test + 1}, "test": {"top1": test}, "train": {"time_s": 600.0}, "latency_ms": latency,
            "latency": {"path": "onnx CPU fp32"}, "time_s": 700.0}


def test_the_fastest_batch_1_path_is_taken(bench) -> None:
    fastest = bench.fastest(BENCH_CSV)  # the batch-8 row is faster per call but not a batch-1 latency
    assert fastest["latency_ms"] == 3.75 and fastest["path"] == "openvino OpenVINO fp32"
    assert fastest["threads"] == 2 and fastest["img_size"] == 128 and len(fastest["paths"]) == 3


def test_each_row_trains_the_same_student_and_only_the_distilled_one_has_a_teacher(bench, tmp_path) -> None:
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"")
    common = dict(seed=1, work=tmp_path, name="x", quick=False, teacher_recipe="herbs_lite0_128",
                  teacher_sets=["train.epochs=14"], distill_sets=["distill.temperature=4"])
    distilled = bench.train_command("distilled", tmp_path / "d", teacher=teacher, **common)
    alone = bench.train_command("alone", tmp_path / "d", teacher=None, **common)
    teacher_cmd = bench.train_command("teacher", tmp_path / "d", teacher=None, **common)
    assert distilled[distilled.index("distill") + 1] == str(teacher)
    assert distilled[distilled.index("--recipe") + 1] == alone[alone.index("--recipe") + 1] == "baseline_lite0_128"
    assert "distill.temperature=4" in distilled and "distill.temperature=4" not in alone
    assert teacher_cmd[teacher_cmd.index("--recipe") + 1] == "herbs_lite0_128" and "train.epochs=14" in teacher_cmd
    for cmd in (distilled, alone, teacher_cmd):
        assert cmd[cmd.index("--seed") + 1] == "1"
    with pytest.raises(RuntimeError, match="the teacher .* is missing"):
        bench.train_command("distilled", tmp_path / "d", teacher=tmp_path / "none.pt", **common)


def test_the_claim_needs_every_seed_above_the_student_alone(bench) -> None:
    shown = [_result("cub100", "distilled", s, v) for s, v in enumerate((71.0, 72.0, 73.0))]
    shown += [_result("cub100", "alone", s, v) for s, v in enumerate((68.0, 70.5, 69.0))]
    assert bench.verdict(shown, "cub100").startswith("cub100: the distilled student beats the student alone: +2.83")
    overlap = shown[:3] + [_result("cub100", "alone", s, v) for s, v in enumerate((68.0, 71.5, 69.0))]
    assert bench.verdict(overlap, "cub100").startswith("cub100: not shown: +2.50 points on the mean, within the seed")
    one = [_result("cub100", "distilled", 0, 71.0), _result("cub100", "alone", 0, 68.0)]
    assert "not shown (one seed)" in bench.verdict(one, "cub100")
    assert "no verdict" in bench.verdict(shown[:3], "cub100")


def test_table_rows(bench) -> None:
    results = [_result("flowers102", "teacher", 0, 83.0, 12.0), _result("flowers102", "teacher", 1, 85.0, 14.0),
               _result("flowers102", "distilled", 0, 82.0)]
    lines = bench.table(results).splitlines()
    assert lines[2] == ("| flowers102 | teacher: herbs (tf_efficientnet_lite0) | 2 | 85.00 (84.00-86.00) | "
                        "84.00 (83.00-85.00) | 13.00 ms (onnx CPU fp32) | 10.0 min |")
    assert lines[3].startswith("| flowers102 | student, distilled: baseline (tf_efficientnet_lite0) | 1 | 83.00 | 82.00 |")


def test_saved_runs_are_reused_and_a_failed_run_means_no_table(bench, tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "work"
    (work / "results" / "distill").mkdir(parents=True)
    (work / "results" / "distill" / "cub100-teacher-s0.json").write_text(json.dumps(_result("cub100", "teacher", 0,
                                                                                            80.0)))
    monkeypatch.setattr(bench, "prepare", lambda work, names, quick=False: {n: work / n for n in names})
    calls = []

    def fake(data, row, seed, *args, **kwargs):
        calls.append(row)
        if row == "alone":
            raise RuntimeError("exit 1: boom")
        return _result(data, row, seed, 70.0)

    monkeypatch.setattr(bench, "measure", fake)
    with pytest.raises(SystemExit, match="no table: some runs failed\ncub100-alone-s0: exit 1: boom"):
        bench.main(["--work", str(work), "--data", "cub100", "--seeds", "0"])
    assert calls == ["distilled", "alone", "linear_probe"]  # the teacher came from its saved result
    assert "| data |" not in capsys.readouterr().out
    assert (work / "results" / "distill" / "cub100-distilled-s0.json").is_file()  # what finished is kept for the next call


@pytest.mark.slow
def test_quick_mode_end_to_end(bench, tmp_path, capsys, monkeypatch) -> None:
    """--quick on one demo stand-in: teacher, distilled, alone and probe trained, evaluated and benched through the
    CLI; a second call prints the table from the saved results without running anything."""
    work = tmp_path / "work"
    bench.main(["--quick", "--work", str(work), "--data", "flowers102"])
    out = capsys.readouterr().out
    assert "| flowers102 | student, distilled: baseline (test_efficientnet) | 1 |" in out
    assert "| flowers102 | teacher: baseline (test_resnet) | 1 |" in out
    distilled = json.loads((work / "results" / "distill" / "flowers102-distilled-s0.json").read_text())
    assert distilled["distill"]["backbone"] == "test_resnet" and distilled["distill"]["img_size"] == 48
    assert distilled["latency_ms"] > 0 and distilled["latency"]["path"] and distilled["val"]["top1"] >= 0
    assert distilled["command"][0].startswith("fgcli distill ") and len(distilled["command"]) == 3

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should run again")

    monkeypatch.setattr(bench, "run", refuse)
    bench.main(["--quick", "--work", str(work), "--data", "flowers102"])
    assert capsys.readouterr().out.count("| flowers102 |") == 4
