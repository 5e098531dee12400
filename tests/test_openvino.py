"""OpenVINO through onnxruntime: provider selection, precision (f32 / bf16), node placement and CPU fall-back,
the error lines, and `fgcli bench` side by side; and the OpenVINO IR format on OpenVINO's own runtime (export,
parity with the ONNX file for every method, bf16, predict / eval / bench). Tests that run OpenVINO skip where its
plugin (or the openvino package) is missing."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
from exportkit import METHODS, make_checkpoint_file, write_images
from typer.testing import CliRunner

import fgcli.api
import fgcli.inference as inference
from fgcli.cli import app
from fgcli.errors import UserError
from fgcli.formats import get_format
from fgcli.inference import (
    CPU_EP,
    OPENVINO_EP,
    OnnxPredictor,
    Placement,
    check_precision,
    create_session,
    effective_precision,
    node_placement,
    openvino_missing,
    resolve_providers,
)
from fgcli.parity import Parity, compare_probs, failure
from fgcli.tasks.bench_formats import check_parity
from fgcli.tasks.export_model import ExportOptions, export_checkpoint
from fgcli.timing import BenchRow

runner = CliRunner()
needs_openvino = pytest.mark.skipif(openvino_missing() is not None, reason="onnxruntime-ep-openvino not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, fp32 .onnx, image folder): a tiny HERBS model (TopK, GatherElements) and 3 images."""
    folder = tmp_path_factory.mktemp("openvino")
    ckpt = make_checkpoint_file(folder, "herbs")
    onnx_path = export_checkpoint(ckpt, ExportOptions(verify=False)).files["onnx"]
    write_images(folder / "images", 3, size=72)
    return ckpt, onnx_path, folder / "images"


@pytest.fixture
def no_plugin(monkeypatch):
    """As if onnxruntime-ep-openvino were not installed (the import fails)."""
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(inference.log, "warning", lambda msg, *a, **k: seen.append(str(msg)))
    return seen


def test_precision_names():
    assert [check_precision(p) for p in (None, "f32", "FP32", "float32", "bf16", "bfloat16")] == \
        ["fp32", "fp32", "fp32", "fp32", "bf16", "bf16"]
    with pytest.raises(UserError, match="--precision f16 is not valid; use f32"):
        check_precision("f16")


def test_bf16_support_follows_the_cpu(monkeypatch):
    from fgcli import cpu

    def with_flags(*flags):
        return cpu.CpuInfo(model="test CPU", flags=frozenset(flags), physical_cores=2, mhz=2000.0)

    monkeypatch.setattr(cpu, "cpu_info", lambda: with_flags("avx512f", "avx512_bf16"))
    assert inference.bf16_supported()
    monkeypatch.setattr(cpu, "cpu_info", lambda: with_flags("avx512f", "avx512_vnni"))
    assert not inference.bf16_supported()


def test_bf16_needs_openvino_and_a_bf16_cpu(monkeypatch, warnings):
    with pytest.raises(UserError, match="runs on OpenVINO only: add --providers openvino"):
        effective_precision("bf16", openvino=False)
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    assert effective_precision("bf16", openvino=True) == "fp32"
    assert len(warnings) == 1 and "neither AVX-512 BF16 nor AMX" in warnings[0] and "fp32" in warnings[0]
    assert effective_precision("f32", openvino=True) == "fp32" and len(warnings) == 1


def test_placement_line():
    whole = Placement(nodes={OPENVINO_EP: 10}, ops={OPENVINO_EP: {"Conv": 10}}, subgraphs={OPENVINO_EP: 1})
    assert whole.line(OPENVINO_EP) == "node placement: all 10 nodes on OpenVINO in 1 subgraph"
    split = Placement(nodes={OPENVINO_EP: 8, CPU_EP: 3}, ops={CPU_EP: {"TopK": 2, "RoiAlign": 1}},
                      subgraphs={OPENVINO_EP: 2, CPU_EP: 3})
    assert split.line(OPENVINO_EP) == ("node placement: OpenVINO 8 of 11 nodes in 2 subgraphs; "
                                       "CPU 3 (TopK 2, RoiAlign 1)")


def test_missing_plugin_is_one_line_naming_the_extra(exported, no_plugin):
    _, onnx_path, images = exported
    assert 'pip install "fgcli[openvino]"' in openvino_missing()
    with pytest.raises(UserError, match=r'needs the OpenVINO plugin for onnxruntime: pip install "fgcli\[openvino\]"'):
        resolve_providers(["openvino"])
    for args in (["predict", str(onnx_path), str(images), "--providers", "openvino"],
                 ["bench", str(onnx_path), "--providers", "cpu,openvino", "--iters", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and 'pip install "fgcli[openvino]"' in errors[0], result.output


def test_openvino_combines_with_cpu_only(no_plugin):
    with pytest.raises(UserError, match="unknown onnxruntime provider 'NoSuchExecutionProvider'"):
        resolve_providers(["NoSuchExecutionProvider"])
    assert resolve_providers(["cpu"]) == [CPU_EP]


@needs_openvino
def test_openvino_f32_matches_cpu_and_bf16_is_honoured(exported):
    _, onnx_path, _ = exported
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    cpu = OnnxPredictor(onnx_path, providers=["cpu"], threads=1)
    f32 = OnnxPredictor(onnx_path, providers=["openvino"], threads=1)
    assert f32.provider == OPENVINO_EP and f32.precision == "fp32"
    assert f32.device == "onnxruntime OpenVINOExecutionProvider (fp32)"
    ref, got = cpu(x)[0], f32(x)[0]
    assert np.abs(got - ref).max() < 1e-4
    # HERBS' TopK / GatherElements / graph combiner all compile: nothing falls back to the CPU provider
    placement = f32.placement
    assert placement is not None and placement.nodes == {OPENVINO_EP: placement.total}
    assert f32.placement_line().startswith(f"node placement: all {placement.total} nodes on OpenVINO")
    with pytest.raises(UserError, match="openvino combines with cpu only"):
        resolve_providers(["openvino", "cuda"])
    if not inference.bf16_supported():
        pytest.skip("this CPU has no AVX-512 BF16 / AMX")
    bf16 = OnnxPredictor(onnx_path, providers=["openvino", "cpu"], threads=1, precision="bf16")
    assert bf16.precision == "bf16" and bf16.device.endswith("(bf16)")
    low = bf16(x)[0]
    assert 0 < np.abs(low - ref).max() < 0.1  # really bf16 (not the f32 result), and close to it


@needs_openvino
def test_unsupported_bf16_warns_and_runs_f32(exported, monkeypatch, warnings):
    _, onnx_path, _ = exported
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    pred = OnnxPredictor(onnx_path, providers=["openvino"], threads=1, precision="bf16")
    assert pred.precision == "fp32" and pred.device.endswith("(fp32)")
    assert len(warnings) == 1 and "running OpenVINO in fp32" in warnings[0]


@needs_openvino
def test_nodes_openvino_does_not_take_fall_back_to_cpu(tmp_path):
    """A node OpenVINO has no kernel for (onnxruntime's FastGelu contrib op) runs on the CPU provider, the rest
    on OpenVINO, with the same outputs as the CPU provider; the placement says how many nodes ran where."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("FastGelu", ["a"], ["b"], domain="com.microsoft"),
             helper.make_node("Sigmoid", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = tmp_path / "fallback.onnx"
    onnx.save(model, path)
    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    session = create_session(path, providers=["openvino"], threads=1)
    assert session.get_providers()[0] == OPENVINO_EP
    placement = node_placement(session)
    assert placement is not None
    assert placement.nodes == {OPENVINO_EP: 2, CPU_EP: 1} and placement.ops[CPU_EP] == {"FastGelu": 1}
    assert placement.line(OPENVINO_EP) == "node placement: OpenVINO 2 of 3 nodes in 2 subgraphs; CPU 1 (FastGelu 1)"
    ref = create_session(path, providers=["cpu"], threads=1).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], ref, atol=1e-6)


@needs_openvino
def test_predict_with_openvino_prints_provider_precision_and_placement(exported):
    _, onnx_path, images = exported
    result = runner.invoke(app, ["predict", str(onnx_path), str(images), "--providers", "openvino",
                                 "--threads", "1", "--topk", "1", "--out", str(images.parent / "ov.json")])
    assert result.exit_code == 0, result.output
    assert "OpenVINOExecutionProvider (fp32)" in result.output and "node placement: all" in result.output
    data = json.loads((images.parent / "ov.json").read_text())
    assert data["device"] == "onnxruntime OpenVINOExecutionProvider (fp32)" and len(data["predictions"]) == 3
    cpu = runner.invoke(app, ["predict", str(onnx_path), str(images), "--providers", "cpu", "--precision", "bf16"])
    assert cpu.exit_code == 1 and "runs on OpenVINO only" in cpu.output


def test_checkpoint_refuses_precision_and_providers(exported):
    ckpt, _, images = exported
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "--precision", "bf16", "--device", "cpu"])
    assert result.exit_code == 1 and "applies to .onnx" in result.output
    result = runner.invoke(app, ["eval", str(ckpt), "--providers", "openvino", "--device", "cpu"])
    assert result.exit_code == 1 and "--providers applies to .onnx models only" in result.output


@needs_openvino
def test_eval_onnx_on_openvino(tiny_demo, tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline", size=32, classes=list(tiny_demo.classes))
    onnx_path = export_checkpoint(ckpt, ExportOptions(verify=False)).files["onnx"]
    runs = {}
    for provider in ("cpu", "openvino"):
        out = tmp_path / provider
        result = runner.invoke(app, ["eval", str(onnx_path), "--data", str(tiny_demo.root), "--providers", provider,
                                     "--out", str(out), "--workers", "0", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert ("node placement: all" in result.output) == (provider == "openvino")
        runs[provider] = json.loads((out / "metrics.json").read_text())
    assert runs["openvino"]["device"] == "onnxruntime OpenVINOExecutionProvider (fp32)"
    assert runs["openvino"]["inference_precision"] == "fp32"
    assert runs["openvino"]["top1"] == runs["cpu"]["top1"] and runs["openvino"]["num_samples"] == 8


def _rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@needs_openvino
def test_bench_side_by_side(exported, tmp_path, monkeypatch):
    """torch, onnxruntime CPU fp32 and int8 (the file beside MODEL), onnxruntime's OpenVINO provider f32 / bf16 /
    int8, and the OpenVINO IR converted from MODEL: same batch sizes, agreement and |Δprob| against torch, node
    placement per OpenVINO provider backend."""
    ckpt, onnx_path, images = exported
    shutil.copy(onnx_path, onnx_path.with_name("model.int8.onnx"))  # stands in for `export --int8`'s file
    out = tmp_path / "bench.csv"
    try:
        result = runner.invoke(app, ["bench", str(onnx_path), "--checkpoint", str(ckpt), "--providers",
                                     "cpu,openvino", "--batch-sizes", "2", "--iters", "1", "--warmup", "0",
                                     "--threads", "1", "--images", str(images), "--out", str(out), "--verify"])
    finally:
        onnx_path.with_name("model.int8.onnx").unlink()
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    bf16 = [("onnx", "OpenVINO", "bf16")] if inference.bf16_supported() else []
    ir = [] if get_format("openvino").missing_runtime() else \
        [("openvino", "CPU", "fp32"), *(("openvino", "CPU", "bf16") for _ in bf16)]  # the IR, converted from MODEL
    assert [(r["backend"], "OpenVINO" if "OpenVINO" in r["device"] else "CPU", r["precision"]) for r in rows] == [
        ("torch", "CPU", "fp32"), ("onnx", "CPU", "fp32"), ("onnx", "CPU", "int8"), ("onnx", "OpenVINO", "fp32"),
        *bf16, ("onnx", "OpenVINO", "int8"), *ir]
    assert all(r["batch"] == "2" and r["threads"] == "1" and float(r["agreement"]) == 100.0 for r in rows)
    assert float(rows[3]["max_dprob"]) < 1e-4
    assert "compared with torch fp32 on 3 images from" in result.output and "vs torch" in result.output
    assert result.output.count("node placement: all") == len(bf16) + 2


@needs_openvino
def test_bench_without_bf16_says_so(exported, monkeypatch):
    _, onnx_path, _ = exported
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    result = runner.invoke(app, ["bench", str(onnx_path), "--providers", "openvino", "--batch-sizes", "1",
                                 "--iters", "1", "--warmup", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "onnx OpenVINO bf16 (this CPU has neither AVX-512 BF16 nor AMX)" in result.output
    assert "torch (an .onnx MODEL: give --checkpoint" in result.output
    assert "onnx OpenVINO" in result.output and " bf16 " not in result.output.split("compared")[0]


def test_bench_all_without_plugin_shows_what_it_has(exported, tmp_path, no_plugin, monkeypatch):
    _, onnx_path, _ = exported
    monkeypatch.setitem(sys.modules, "openvino", None)  # nor the openvino package: no IR either
    out = tmp_path / "bench.csv"
    result = runner.invoke(app, ["bench", str(onnx_path), "--providers", "all", "--device", "cpu",
                                 "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [(r["backend"], r["precision"]) for r in _rows(out)] == [("onnx", "fp32")]
    skipped = next(line for line in result.output.splitlines() if line.startswith("skipped:"))
    assert 'openvino (--providers openvino needs the OpenVINO plugin' in result.output and "int8 (no" in skipped
    assert 'openvino (the OpenVINO IR format needs OpenVINO, which is not installed here: pip install ' \
        '"fgcli[openvino]")' in " ".join(result.output.split())
    bad = runner.invoke(app, ["bench", str(onnx_path), "--providers", "cpu", "--precision", "bf16", "--iters", "1"])
    assert bad.exit_code == 1 and "runs on OpenVINO only" in bad.output


def test_bench_verify_names_the_backend_that_disagrees(exported, monkeypatch):
    """A backend whose answers differ from the reference's: `bench --verify` names it, says by how much, and
    exits 1 (after printing the table)."""
    ckpt, onnx_path, _ = exported
    run = OnnxPredictor.run

    def wrong(self, images):
        logits, probs = run(self, images)
        logits = logits.copy()
        logits[:, 0] += 50.0  # always class 0
        return logits, probs

    args = ["bench", str(onnx_path), "--checkpoint", str(ckpt), "--providers", "cpu", "--batch-sizes", "1",
            "--iters", "1", "--warmup", "0", "--threads", "1", "--verify"]
    ok = runner.invoke(app, args)
    assert ok.exit_code == 0, ok.output
    monkeypatch.setattr(OnnxPredictor, "run", wrong)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "p50 ms" in result.output  # the table is still printed
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "disagree with torch fp32: onnx CPU fp32: max |Δprob|" in errors[0], result.output
    assert "> 0.0001" in errors[0]  # fgcli.parity.TOLERANCES["fp32"]


def test_check_parity_tolerances():
    def row(precision, agreement, dprob, backend="openvino"):
        return BenchRow(backend, f"onnxruntime {backend}", 1, 64, 1, 1, 1.0, 1.0, 1.0, 1.0, precision=precision,
                        agreement=agreement, max_dprob=dprob)

    rows = [row("fp32", 100.0, 0.0, "torch"), row("fp32", 100.0, 5e-5), row("bf16", 99.5, 0.02),
            row("int8", 96.0, 0.2, "onnx")]
    assert check_parity(rows) == []
    failures = check_parity([row("fp32", 100.0, 2e-4), row("bf16", 90.0, 0.3), row("int8", 96.0, 0.2)],
                            min_agreement=97.0)
    assert len(failures) == 3 and "max |Δprob| 2.00e-04 > 0.0001" in failures[0]
    assert "top-1 agreement 90.00% < 97%" in failures[1] and "96.00% < 97%" in failures[2]
    # fp32 on a GPU may run its convolutions in TF32: the table's tf32 row
    gpu = BenchRow("onnx", "onnxruntime CUDAExecutionProvider", 1, 64, 1, 1, 1.0, 1.0, 1.0, 1.0, precision="fp32",
                   agreement=100.0, max_dprob=5e-4)
    assert check_parity([gpu]) == []



# -- the OpenVINO IR format (fgcli.formats.openvino): OpenVINO's converter and its own runtime ------------------
needs_ir = pytest.mark.skipif(get_format("openvino").missing_runtime() is not None, reason="openvino not installed")


@pytest.fixture(scope="module")
def ir(exported):
    """(checkpoint, export result with the ONNX file and the IR converted from it, image folder): HERBS."""
    ckpt, onnx_path, images = exported
    result = export_checkpoint(ckpt, ExportOptions(format="onnx,openvino", out=onnx_path.with_name("ir.onnx")))
    return ckpt, result, images


def _ir_vs_onnx(result, tta=None) -> Parity:
    from fgcli.formats.openvino.ir import OpenVinoPredictor

    x = np.random.default_rng(3).standard_normal((5, 3, 64, 64), dtype=np.float32)
    onnx_probs = OnnxPredictor(result.files["onnx"], providers=["cpu"], threads=1, tta=tta)(x)[1]
    return compare_probs(onnx_probs, OpenVinoPredictor(result.files["openvino"], threads=1, tta=tta)(x)[1])


@needs_ir
def test_ir_export_matches_onnx_and_carries_the_metadata(ir):
    from fgcli.formats.onnx.writers import read_info as onnx_info
    from fgcli.formats.openvino.ir import read_info as ir_info

    _, result, _ = ir
    xml = result.files["openvino"]
    assert xml == xml.with_name("ir.xml") and xml.with_suffix(".bin").is_file()
    assert sorted(p.name for p in xml.parent.glob("*partial*")) == []  # staged files renamed or removed
    assert ir_info(xml) == onnx_info(result.files["onnx"])  # fgcli's metadata, key by key, in the IR's rt_info
    # checked against torch at the format's tolerance, and within it of the ONNX file (with and without TTA)
    assert get_format("openvino").tolerance.max_dprob == 1e-4
    assert result.parity["openvino"].max_abs_dprob <= 1e-4 and result.parity["openvino"].top1_agreement == 1.0
    for tta in (None, "flip"):
        parity = _ir_vs_onnx(result, tta)
        assert failure(parity, "fp32") is None, parity.line()


@needs_ir
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_ir_of_every_method_converts_and_matches_onnx(method, tmp_path):
    """OpenVINO's converter takes each method's graph (HERBS' TopK / GatherElements, MGE-CNN's RoiAlign) and
    its runtime gives the ONNX file's probabilities within the fp32 tolerance."""
    ckpt = make_checkpoint_file(tmp_path, method)
    result = fgcli.api.export(ckpt, format="onnx,openvino", verify=True)
    assert set(result.files) == {"onnx", "openvino"} and failure(result.parity["openvino"], "fp32") is None
    parity = _ir_vs_onnx(result)
    assert failure(parity, "fp32") is None, parity.line()


@needs_ir
def test_ir_bf16_where_the_cpu_has_it_and_fp32_elsewhere(ir, monkeypatch, warnings):
    from fgcli.formats.openvino.ir import OpenVinoPredictor

    _, result, _ = ir
    x = np.random.default_rng(4).standard_normal((4, 3, 64, 64), dtype=np.float32)
    f32 = OpenVinoPredictor(result.files["openvino"], threads=1)
    assert f32.device == "openvino CPU (fp32)" and f32.backend == "openvino"
    if inference.bf16_supported():
        bf16 = OpenVinoPredictor(result.files["openvino"], threads=1, precision="bf16")
        assert bf16.device == "openvino CPU (bf16)"
        low, ref = bf16(x)[1], f32(x)[1]
        assert 0 < np.abs(low - ref).max() < 0.1  # really bf16, and close to fp32
        assert failure(compare_probs(ref, low), "bf16") is None
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    assert OpenVinoPredictor(result.files["openvino"], threads=1, precision="bf16").precision == "fp32"
    assert len(warnings) == 1 and "running OpenVINO in fp32" in warnings[0]


@needs_ir
def test_ir_from_the_cli_predict_and_bench(ir, tmp_path):
    ckpt, result, images = ir
    xml = result.files["openvino"]
    outs = {}
    for name, model in (("ir", xml), ("onnx", result.files["onnx"])):
        outs[name] = tmp_path / f"{name}.json"
        done = runner.invoke(app, ["predict", str(model), str(images), "--threads", "1", "--out", str(outs[name])])
        assert done.exit_code == 0, done.output
    ir_json, onnx_json = (json.loads(outs[k].read_text()) for k in ("ir", "onnx"))
    assert ir_json["device"] == "openvino CPU (fp32)" and ir_json["backend"] == "openvino"
    assert [p["top"][0]["class"] for p in ir_json["predictions"]] == \
        [p["top"][0]["class"] for p in onnx_json["predictions"]]
    # bench of the checkpoint shows the IR (a temporary conversion) beside torch and onnxruntime
    out = tmp_path / "bench.csv"
    bench = runner.invoke(app, ["bench", str(ckpt), "--batch-sizes", "2", "--iters", "1", "--warmup", "0",
                                "--threads", "1", "--precision", "f32", "--device", "cpu", "--out", str(out),
                                "--verify"])
    assert bench.exit_code == 0, bench.output
    rows = _rows(out)
    assert [(r["backend"], r["precision"]) for r in rows] == [("torch", "fp32"), ("onnx", "fp32"),
                                                              ("openvino", "fp32")]
    assert rows[2]["device"] == "openvino CPU (fp32)" and float(rows[2]["max_dprob"]) < 1e-4
    assert "openvino CPU" in bench.output
    only = runner.invoke(app, ["bench", str(xml), "--backends", "onnx"])
    assert only.exit_code == 1 and "only has the openvino backend" in only.output


@needs_ir
def test_eval_of_an_ir_matches_its_onnx_file(tiny_demo, tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline", size=32, classes=list(tiny_demo.classes))
    result = export_checkpoint(ckpt, ExportOptions(format="onnx,openvino", verify=False))
    runs = {}
    for name, model in result.files.items():
        out = tmp_path / name
        done = runner.invoke(app, ["eval", str(model), "--data", str(tiny_demo.root), "--out", str(out),
                                   "--workers", "0", "--threads", "1"])
        assert done.exit_code == 0, done.output
        runs[name] = json.loads((out / "metrics.json").read_text())
    assert runs["openvino"]["format"] == "openvino" and runs["openvino"]["device"] == "openvino CPU (fp32)"
    assert runs["openvino"]["top1"] == runs["onnx"]["top1"] and runs["openvino"]["num_samples"] == 8


@needs_openvino
@needs_ir
def test_the_plugin_and_openvino_run_in_one_process(ir):
    """onnxruntime's OpenVINO plugin (its own OpenVINO libraries) and the openvino package, both loaded."""
    from fgcli.formats.openvino.ir import OpenVinoPredictor

    _, result, _ = ir
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64), dtype=np.float32)
    plugin = OnnxPredictor(result.files["onnx"], providers=["openvino"], threads=1)
    own = OpenVinoPredictor(result.files["openvino"], threads=1)
    first = own(x)[1]
    assert plugin.provider == OPENVINO_EP and failure(compare_probs(plugin(x)[1], own(x)[1]), "fp32") is None
    np.testing.assert_array_equal(first, own(x)[1])


@needs_openvino
def test_a_plugin_without_a_cpu_device_points_to_the_ir(monkeypatch):
    """On CPUs where the plugin registers but lists no device (seen on an AMD EPYC), --providers openvino is
    refused with one line naming the IR format, which runs on OpenVINO's own runtime."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_ep_devices", lambda: [])
    monkeypatch.setattr(ort, "register_execution_provider_library", lambda *a: None)
    with pytest.raises(UserError, match=r"found no CPU device .*--format openvino.*OpenVINO's own runtime"):
        inference.openvino_device()


@needs_ir
def test_predictors_freed_in_the_order_they_were_made_leave_a_working_signal_stack(ir, tmp_path):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core and restores the one it found when that Core
    is freed: with a Core per predictor, two predictors freed first-made-first left a freed stack installed and
    the next signal (here SIGCHLD with a handler, as torch's DataLoader sets one) killed the process (SIGSEGV).
    In a subprocess, so that a crash fails this test rather than the test session."""
    import subprocess
    import textwrap

    script = tmp_path / "two_predictors.py"
    script.write_text(textwrap.dedent(f"""
        import gc, signal, subprocess
        from fgcli.formats.openvino.ir import OpenVinoPredictor
        first = OpenVinoPredictor({str(ir[1].files["openvino"])!r}, threads=1)
        second = OpenVinoPredictor({str(ir[1].files["openvino"])!r}, threads=1)
        del first; gc.collect()
        del second; gc.collect()
        junk = [bytearray(1 << 20) for _ in range(100)]; del junk
        signal.signal(signal.SIGCHLD, lambda *args: None)
        for _ in range(20):
            subprocess.run(["true"])
        print("signals handled")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "signals handled" in done.stdout, (done.returncode, done.stderr[-2000:])
