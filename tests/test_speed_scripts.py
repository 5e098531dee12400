"""benchmarks/int8_results.py and benchmarks/onnx_vs_torch.py: their tables, the resume from saved runs and the
target verdict (no model is run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchkit import load_benchmark as _load


@pytest.fixture()
def int8():
    return _load("int8_results")


@pytest.fixture()
def speed():
    return _load("onnx_vs_torch")


CSV = """backend,device,batch,img_size,threads,iters,p50_ms,p90_ms,mean_ms,throughput,precision,agreement,max_dprob
torch,torch cpu,1,128,1,20,12.0,13,12,80,fp32,100,0
torch,torch cpu,8,128,1,20,80.0,90,80,100,fp32,100,0
onnx,onnxruntime CPUExecutionProvider,1,128,1,20,3.0,3,3,300,fp32,100,1e-6
onnx,onnxruntime CPUExecutionProvider,8,128,1,20,20.0,20,20,400,fp32,100,1e-6
onnx,onnxruntime CPUExecutionProvider,1,128,1,20,1.5,2,2,600,int8,0,1e-1
onnx,onnxruntime CPUExecutionProvider,8,128,1,20,10.0,10,10,800,int8,0,1e-1
"""


def _result(run: str, method: str, test: dict, val: dict | None = None) -> dict:
    """A summary as int8_results.py writes it."""
    return {"config": {"run": run, "method": method, "fp32_first_layers": 0, "calibration": "train",
                       "calibration_method": "percentile"},
            "test": test, "val": val or {"cpu fp32": 70.0, "cpu int8": 69.8}, "latency_ms": {},
            "time_s": 60.0, "cpu": "Some CPU (AVX2)", "cpus": 2, "threads": 1, "other_load": 0.0, "cpu_shared": False,
            "date": "2025-01-02T03:04:05+00:00", "command": ["fgcli export best.pt --onnx --int8"]}


def test_int8_table_changes_and_speedups(int8):
    latency = int8.bench_speedups(CSV)
    assert latency["onnx int8"] == {"1": 1.5, "8": 10.0} and latency["torch fp32"]["8"] == 80.0
    assert int8.ratio(latency, "onnx fp32", "onnx int8", "8") == pytest.approx(2.0)
    assert int8.ratio(latency, "onnx fp32", "openvino int8", "1") is None
    result = _result("herbs-s0", "herbs", {"cpu fp32": 70.0, "cpu int8": 69.25})
    result["latency_ms"] = latency
    result["config"]["fp32_first_layers"] = 2
    lines = int8.lines([("HERBS", result), ("MGE-CNN", None)])
    row = next(line for line in lines if line.startswith("| HERBS"))
    # fp32 val / test, int8 val / test, change on val / test, speed-up
    assert "first 2 weight layers fp32" in row
    assert "| 70.00 | 70.00 | int8 | 69.80 | 69.25 | -0.20 | -0.75 | 2.00× / 2.00× |" in row
    assert not any("OpenVINO" in line for line in lines)  # not measured: no rows
    assert lines[-1] == "| MGE-CNN | missing |  |  |  |  |  |  |  |  |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_int8_results_resumes_from_saved_runs(int8, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    saved = _result("baseline-s0", "baseline", {"cpu fp32": 68.22, "cpu int8": 67.96})
    (work / "results" / "baseline-s0.json").write_text(json.dumps(saved))
    monkeypatch.setattr(int8, "measure", lambda *a, **k: pytest.fail("a saved run was measured again"))
    monkeypatch.setattr(sys, "argv", ["int8_results.py", str(tmp_path / "runs" / "baseline-s0"), "--data", "d",
                                      "--work", str(work)])
    int8.main()
    out = capsys.readouterr().out
    assert "| baseline | onnxruntime CPU | 70.00 | 68.22 | int8 | 69.80 | 67.96 | -0.20 | -0.26 |" in out
    assert "measured 2025-01-02 on Some CPU (AVX2), 2 CPUs, 1 thread per run; no other work shared the CPU" in out
    monkeypatch.setattr(sys, "argv", ["int8_results.py", str(tmp_path / "runs" / "herbs-s0"), "--data", "d",
                                      "--work", str(work), "--report"])
    int8.main()
    assert "not measured yet: herbs-s0" in capsys.readouterr().out


def test_int8_results_prints_no_table_when_a_run_fails(int8, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("exit 1: fgcli export")

    monkeypatch.setattr(int8, "measure", fail)
    monkeypatch.setattr(sys, "argv", ["int8_results.py", str(tmp_path / "x"), "--data", "d", "--work",
                                      str(tmp_path / "w")])
    with pytest.raises(SystemExit, match="no table: some runs failed"):
        int8.main()


def test_fastest_path_verdict(speed):
    times = {"torch fp32": 80.0, "cpu fp32": 20.0, "cpu int8": 10.0, "openvino bf16": 8.0}
    top1 = {"cpu fp32": 70.0, "cpu int8": 69.8, "openvino bf16": 70.2}
    v = speed.verdict(times, top1)
    assert v["fastest"] == "openvino bf16" and v["speedup"] == pytest.approx(10.0) and v["met"]
    assert v["change"] == pytest.approx(0.2)
    slow = speed.verdict({"torch fp32": 30.0, "cpu fp32": 20.0, "openvino bf16": 10.0}, top1)
    assert not slow["met"] and slow["note"] == "missed: speed"
    wrong = speed.verdict(times, {"cpu fp32": 70.0, "openvino bf16": 69.0})
    assert not wrong["met"] and wrong["note"] == "missed: top-1"
    unknown = speed.verdict(times, None)
    assert not unknown["met"] and unknown["note"] == "speed met; top-1 not measured"


def test_speed_table_rows(speed):
    class Row:
        def __init__(self, backend, precision, batch, p50, device="onnxruntime CPUExecutionProvider"):
            self.backend, self.precision, self.batch, self.p50_ms = backend, precision, batch, p50
            self.device = device

    # onnxruntime's OpenVINO provider is a row of the onnx backend (fgcli bench's `openvino` backend is the IR)
    rows = [Row("torch", "fp32", 1, 12.0, "torch cpu"), Row("onnx", "fp32", 1, 3.0), Row("onnx", "int8", 1, 1.5),
            Row("onnx", "bf16", 1, 2.0, "onnxruntime OpenVINOExecutionProvider")]
    latency = speed.latencies(rows)
    assert latency == {1: {"torch fp32": 12.0, "cpu fp32": 3.0, "cpu int8": 1.5, "openvino bf16": 2.0}}
    text = speed.table([{"name": "baseline", "latency": latency, "top1": {"cpu fp32": 68.2, "cpu int8": 68.0}}],
                       [1, 8])
    row = text.splitlines()[2]
    assert row.startswith("| baseline | 1 | 12.0 | 3.0 | 1.5 | — | 2.0 | — | ORT CPU int8 | 8.00× | — | — |")
    assert "68.00 (-0.20) | met |" in row and len(text.splitlines()) == 3  # no batch-8 row: not timed


def test_speed_table_sets_each_path_against_its_precisions_peak(speed):
    latency = {1: {"torch fp32": 12.0, "cpu fp32": 3.0, "cpu int8": 1.5}, 8: {"torch fp32": 80.0, "cpu fp32": 16.0}}
    model = {"name": "m", "latency": latency, "gflop": 0.5, "peaks": {"fp32": 50.0, "bf16": None, "int8": 200.0},
             "threads": 2}
    lines = speed.table_lines([model], [1, 8], accuracy=False)
    # batch 1: torch 0.5 GFLOP / 12 ms = 41.7 GFLOP/s of 2 x 50; int8 0.5 / 1.5 ms = 333.3 of 2 x 200
    assert lines[2].endswith("| ORT CPU int8 | 8.00× | 41.7 (41.7 %) | 333.3 (83.3 %) |")
    # batch 8: 8 x 0.5 / 80 ms = 50.0 of 100; fp32 file 8 x 0.5 / 16 ms = 250.0 of 100
    assert lines[3].endswith("| ORT CPU fp32 | 5.00× | 50.0 (50.0 %) | 250.0 (250.0 %) |")
    assert [speed.precision_of(p) for p in ("openvino bf16", "openvino int8", "openvino f32")] == ["bf16", "int8",
                                                                                                  "fp32"]


def test_add_cost_fills_old_summaries_from_the_model_and_the_cpu_that_timed_them(speed, tmp_path):
    cpu = "Test Xeon (AVX2, AVX-512, AVX512-BF16, AMX-BF16)"
    for table, name, summary in [
        ("speed", "baseline-s0", {"row": "baseline", "seed": 0, "cpu": cpu, "config": {"img_size": 32}}),
        ("speed_random", "mge-s0", {"row": "mge", "seed": 0, "cpu": "Unknown CPU (AVX2)",
                                    "config": {"method": "mge", "backbone": "test_resnet", "img_size": 64,
                                               "classes": 10}}),
        ("flowers102", "baseline-s0", {"config": {"recipe": "baseline_lite0_128",
                                                  "sets": ["model.backbone=test_resnet"]}}),
        ("train_speed", "baseline-128-s0", {"cpu": cpu, "config": {"emulated": None},
                                            "peaks": {"fp32": 166.4, "bf16": 1.0}})]:
        (tmp_path / table).mkdir(exist_ok=True)
        (tmp_path / table / f"{name}.json").write_text(json.dumps(summary))
    changed = speed.add_cost(tmp_path)
    assert changed[1] == "speed_random/mge-s0.json: no peaks known for Unknown CPU (AVX2)"
    filled = json.loads((tmp_path / "speed" / "baseline-s0.json").read_text())
    # 166.4 GFLOP/s fp32 on AVX-512 (64 FLOP per cycle) is a 2.6 GHz clock: AMX bf16 1024 / int8 2048 per cycle
    assert filled["peaks"] == pytest.approx({"fp32": 166.4, "bf16": 2.6 * 1024, "int8": 2.6 * 2048})
    assert filled["peaks_from"] == "benchmarks/results/train_speed/baseline-128-s0.json"
    assert filled["gflop_per_img"] > 0 and changed[0].startswith("speed/baseline-s0.json: ")
    assert speed.add_cost(tmp_path) == [changed[1]]  # filled once


def test_train_speed_quick_prints_every_row_with_its_ratio(capsys, monkeypatch, tmp_path):
    """benchmarks/train_speed.py --quick: a tiny model trained by the real Trainer, fp32 and auto side by side."""
    monkeypatch.setenv("FGCLI_CACHE", str(tmp_path))
    train_speed = _load("train_speed")
    out = tmp_path / "rows.json"
    assert train_speed.main(["--quick", "--methods", "baseline", "--json", str(out), "--profile", "auto"]) == 0
    text = capsys.readouterr().out
    assert "CPU: " in text and "nominal peak per core: fp32" in text
    rows = [line for line in text.splitlines() if line.startswith("| baseline | 32 |")]
    assert [r.split(" | ")[2] for r in rows] == ["fp32", "auto"]
    assert rows[0].split(" | ")[7] == "1.00x"
    saved = json.loads(out.read_text())
    assert [r["row"] for r in saved] == ["fp32", "auto"] and all(r["rate"] > 0 and r["gflop_per_img"] > 0
                                                                 for r in saved)
    assert not saved[0]["profile"] and abs(sum(saved[1]["profile"].values()) - 100) < 0.5  # only `auto` profiled
    assert "other conv" in saved[1]["profile"] and "\nprofile of baseline 32px auto (" in text


def test_train_speed_profile_kinds_add_up_by_hand():
    """A profile's self CPU time by op kind: depthwise convolutions told apart by their weight's shape."""
    train_speed = _load("train_speed")
    events = [("aten::convolution_backward", [[16, 32, 8, 8], [16, 32, 8, 8], [32, 1, 3, 3]], 300.0),
              ("aten::mkldnn_convolution", [[16, 32, 8, 8], [64, 32, 1, 1], [64]], 150.0),
              ("aten::native_batch_norm", [[16, 32, 8, 8]], 100.0),
              ("aten::_foreach_mul_", [], 25.0), ("aten::copy_", [[16, 32, 8, 8]], 15.0),
              ("aten::addmm", [[10], [16, 1280], [1280, 10]], 10.0),
              ("aten::hardtanh_backward", [[16, 32, 8, 8]], 60.0), ("aten::mul_", [[16, 32, 8, 8]], 30.0),
              ("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", [], 30.0),
              ("aten::empty", [[4]], 30.0)]
    assert train_speed.profile_shares(events) == {"depthwise conv": 40.0, "other conv": 20.0, "batch norm": 13.3,
                                                  "activations": 8.0, "elementwise": 4.0, "data loading": 4.0,
                                                  "other": 4.0, "optimizer + EMA": 3.3,
                                                  "dtype / layout copies": 2.0, "matmul / linear": 1.3}
    assert train_speed.op_kind("aten::conv2d", [[8, 3, 32, 32], [16, 3, 3, 3]]) == "other conv"
    assert train_speed.op_kind("aten::relu_", [[8, 3, 32, 32]]) == "activations"
    assert train_speed.op_kind("aten::empty_strided", [[8, 3]]) == "other"


AVX2_PEAKS = {"fp32": 2.0 * 2 * 8 * 2, "bf16": None}  # 2 GHz: 8 fp32 lanes, no bf16
AVX512_BF16_PEAKS = {"fp32": 2.0 * 2 * 16 * 2, "bf16": 2 * 2.0 * 2 * 16 * 2}  # 16 lanes; bf16 2x, not AMX's
AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


@pytest.mark.parametrize(("row", "flags", "emulated", "isa", "peaks"), [
    ("avx2", {"avx2", "fma"}, None, "AVX2", AVX2_PEAKS),  # an AVX2-only CPU: the -avx2 row runs as is
    ("avx2", AMX, "avx2", "AVX2", AVX2_PEAKS),  # above AVX2: capped, labelled emulated
    ("avx512bf16", {"avx2", "avx512f", "avx512_bf16"}, None, "AVX-512 BF16", AVX512_BF16_PEAKS),  # e.g. Zen 4/5
    ("avx512bf16", AMX, "avx512bf16", "AVX-512 BF16", AVX512_BF16_PEAKS),  # oneDNN capped below AMX
])
def test_train_speed_isa_row_is_native_or_emulated_by_the_cpu(monkeypatch, tmp_path, row, flags, emulated, isa,
                                                             peaks):
    """The README's rows of a CPU class (`-avx2`, `-avx512bf16`): measured natively on a CPU of that class,
    emulated (ISA caps) above it, and the capped peaks are the class's whatever the host."""
    from fgcli import cpu

    train_speed = _load("train_speed")
    info = cpu.CpuInfo("Test CPU", frozenset(flags), 2, 2000.0)
    monkeypatch.setattr(cpu, "cpu_info", lambda: info)
    commands = []

    def fake_run(cmd, log):
        commands.append(cmd)
        Path(cmd[cmd.index("--json") + 1]).write_text("[]")

    monkeypatch.setattr(train_speed, "run", fake_run)
    ctx = type("Ctx", (), {"quick": False, "folder": lambda self, t: tmp_path / t})()
    summary = train_speed._measure_readme(train_speed.TableRow(f"baseline-128-{row}", "x"), 0, ctx)
    cmd = commands[0]
    assert (cmd[cmd.index("--emulate") + 1] if "--emulate" in cmd else None) == emulated
    assert summary["config"] == {"method": "baseline", "size": 128, "emulated": emulated, "isa": isa}
    assert summary["peaks"] == peaks
    label = train_speed._isa_label(summary | {"cpu": "Test CPU"})
    assert label == (f" (emulated {isa})" if emulated else f" ({isa})")
    assert train_speed._isa_label({"config": {"emulated": None}, "cpu": "Xeon (AVX2, AMX-BF16)"}) == " (AMX)"


def test_train_speed_isa_row_refuses_a_lower_cpu(monkeypatch, tmp_path):
    """An `-avx512bf16` row cannot be emulated on an AVX2-only CPU: it says which CPU it needs."""
    from fgcli import cpu

    train_speed = _load("train_speed")
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("EPYC", frozenset({"avx2", "fma"}), 2, 2000.0))
    monkeypatch.setattr(train_speed, "run", lambda cmd, log: pytest.fail("ran on a CPU below the row's class"))
    ctx = type("Ctx", (), {"quick": False, "folder": lambda self, t: tmp_path / t})()
    with pytest.raises(RuntimeError, match="herbs-224-avx512bf16 needs a CPU with AVX-512 BF16 .*this one is AVX2"):
        train_speed._measure_readme(train_speed.TableRow("herbs-224-avx512bf16", "x"), 0, ctx)


def test_isa_inference_rows_need_a_cpu_of_their_class(monkeypatch, int8, speed):
    """The int8 / speed tables' `-avx2` / `-avx512bf16` rows: seeds 1 / 3 (the seed-0 rows keep their model), reuse
    the flowers102 run and the int8 row of the same name, and refuse any other CPU class (onnxruntime cannot be
    capped)."""
    from fgcli import cpu

    rows = {r.name: r for r in speed._trained_rows(False)}
    assert rows["herbs-avx2"].seeds == (1,) and rows["herbs"].seeds == (0,)
    assert rows["herbs-avx2"].needs == (("flowers102", "herbs"), ("int8", "herbs-avx2"))
    assert {r.name: r.needs for r in int8._rows(False)}["mge_frozen-avx2"] == (("flowers102", "mge_frozen"),)
    assert [r.name for r in int8._rows(True)] == ["baseline", "herbs", "mge_frozen"]  # --quick: no such rows
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("Xeon", frozenset({"avx2", "avx512f", "amx_bf16"}),
                                                              2, 2000.0))
    with pytest.raises(RuntimeError, match="herbs-avx2 is measured on an AVX2 CPU .*; this one is AMX"):
        int8.require_native_isa("herbs-avx2")
    assert int8.require_native_isa("mge_frozen") == "mge_frozen"
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("EPYC", frozenset({"avx2", "fma"}), 2, 2000.0))
    assert int8.require_native_isa("mge_frozen-avx2") == "mge_frozen"
    with pytest.raises(RuntimeError, match="baseline-avx512bf16 is measured on an AVX-512 BF16 CPU"):
        int8.require_native_isa("baseline-avx512bf16")
    assert rows["herbs-avx512bf16"].seeds == (3,)
    assert rows["herbs-avx512bf16"].needs == (("flowers102", "herbs"), ("int8", "herbs-avx512bf16"))
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("EPYC 9005", frozenset({"avx2", "avx512f",
                                                                                     "avx512_bf16"}), 2, 2000.0))
    assert int8.require_native_isa("herbs-avx512bf16") == "herbs"


def test_openvino_ir_rows_fill_the_openvino_f32_path(int8):
    """Where onnxruntime's OpenVINO plugin lists no device, the IR on OpenVINO's own runtime is the `openvino f32`
    path of both tables (a bench row of backend `openvino`, device `openvino CPU (fp32)`)."""
    ir_csv = CSV + "openvino,openvino CPU (fp32),1,128,1,20,2.5,3,3,400,fp32,100,1e-6\n"
    assert int8.bench_speedups(ir_csv)["openvino fp32"] == {"1": 2.5}
    assert int8.ratio(int8.bench_speedups(ir_csv), "onnx fp32", "openvino fp32", "1") == pytest.approx(1.2)


@pytest.mark.parametrize(("flags", "labels"), [
    ({"avx2", "fma"}, ["openvino f32"]),
    ({"avx2", "avx512f", "avx512_bf16"}, ["openvino f32", "openvino bf16"]),
])
def test_openvino_ir_is_also_judged_at_bf16_where_the_cpu_has_it(monkeypatch, int8, flags, labels):
    """On a CPU with native bf16, `fgcli bench` times the IR at bf16 too; the int8 table must then evaluate that
    path (`--precision bf16` on the .xml) so the Speed table's fastest path has its accuracy beside it."""
    from fgcli import cpu

    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("CPU", frozenset(flags), 2, 2000.0))
    variants = int8.ir_variants()
    assert [v[0] for v in variants] == labels
    assert all(v[1] == "best.xml" and v[2] is None for v in variants)
    assert [v[3] for v in variants][1:] == (["bf16"] if len(labels) > 1 else [])


def test_depthwise_conv_benchmark_finds_the_depthwise_layers_and_times_every_path(capsys) -> None:
    import torch

    bench = _load("depthwise_conv")
    threads = torch.get_num_threads()
    shapes = bench.depthwise_shapes("test_efficientnet", 32)
    assert shapes and all(conv.groups == conv.in_channels == conv.out_channels > 1 for conv, _ in shapes)
    assert all(shape[0] == 1 and shape[1] == conv.in_channels for conv, shape in shapes)
    with torch.random.fork_rng():
        try:
            bench.main(["--backbone", "test_efficientnet", "--img-size", "32", "--batch", "2", "--iters", "1"])
        finally:
            torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms per pass" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| fp32", "| fp32 channels_last", "| bf16", "| bf16 channels_last"]
    assert rows[0].endswith("| 1.00x |") and f"{len(shapes)} depthwise convolutions" in out
