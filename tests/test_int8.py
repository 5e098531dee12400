"""`export --int8`: full QDQ (integer kernels), the fp32 islands and the first layers kept in fp32, the search
that keeps more of them when val top-1 drops, calibration on the train split only."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from exportkit import METHODS, SIZE, make_checkpoint_file, make_demo_checkpoint
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.errors import UserError
from fgcli.formats.onnx import int8 as pipeline
from fgcli.formats.onnx.graph import finite_infinities, fp32_island_nodes
from fgcli.formats.onnx.int8 import Int8Report
from fgcli.formats.onnx.quantize import QUANT_OPS, first_weight_layers, quantize_int8
from fgcli.inference import OnnxPredictor
from fgcli.tasks.export_model import ExportOptions, export_checkpoint


@pytest.fixture(scope="module")
def fp32_files(tmp_path_factory):
    out = {}
    for method in METHODS:
        ckpt = make_checkpoint_file(tmp_path_factory.mktemp(method), method)
        out[method] = export_checkpoint(ckpt, ExportOptions(verify=False)).files["onnx"]
    return out


def _weight_layers(model):
    inits = {t.name for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return [(n, producer.get(n.input[1])) for n in model.graph.node
            if n.op_type in QUANT_OPS and len(n.input) > 1 and (n.input[1] in inits or n.input[1] in producer)]


@pytest.mark.parametrize("method", METHODS)
def test_static_int8_quantizes_activations_and_keeps_islands_and_first_layers(fp32_files, method):
    path = fp32_files[method]
    calib = [np.random.default_rng(i).standard_normal((4, 3, SIZE, SIZE), dtype=np.float32) for i in range(2)]
    quant = quantize_int8(onnx.load(str(path)), calib, "random", keep_first=2)
    assert quant.mode == "static"  # percentile calibration, no fallback to dynamic
    model = quant.model
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    layers = _weight_layers(model)
    int8 = [n for n, p in layers if p is not None and p.op_type == "DequantizeLinear"]
    # full QDQ: quantized weight layers also have a quantized output, so onnxruntime runs integer kernels
    assert int8 and all("QuantizeLinear" in consumers.get(n.output[0], []) for n in int8 if n.op_type == "Conv")
    names = {n.name for n in int8}
    assert not names & set(quant.excluded_nodes)
    assert quant.fp32_first == 2 and quant.quantized_layers == len(int8) < quant.weight_layers
    # the first two weight layers read float weights
    first_two = [n for n, _ in layers][:2]
    assert all(n.name not in names for n in first_two)
    # TopK / ArgMax scores and RoiAlign's boxes never come from dequantized int8 values
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        sensitive = {"TopK": 0, "ArgMax": 0, "RoiAlign": 1}.get(node.op_type)
        if sensitive is not None:
            assert getattr(producer.get(node.input[sensitive]), "op_type", "") != "DequantizeLinear", node.name
    onnx.save(model, str(path.with_name("q.onnx")))
    logits, probs = OnnxPredictor(path.with_name("q.onnx"), device="cpu")(calib[0])
    assert np.isfinite(probs).all() and probs.shape[0] == 4


def test_infinite_mask_constants_become_finite_with_the_same_outputs(fp32_files):
    """HERBS' margin key masks with -inf, which percentile calibration cannot take a range over."""
    path = fp32_files["herbs"]
    model = onnx.load(str(path))
    assert finite_infinities(model) >= 1 and finite_infinities(model) == 0
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    fixed = path.with_name("finite.onnx")
    onnx.save(model, str(fixed))
    np.testing.assert_array_equal(OnnxPredictor(fixed, device="cpu")(x)[0], OnnxPredictor(path, device="cpu")(x)[0])


def test_first_weight_layers_follow_the_graph_from_the_input(fp32_files):
    model = onnx.load(str(fp32_files["baseline"]))
    first = first_weight_layers(model, 3)
    inits = {t.name for t in model.graph.initializer}
    order = [n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.input[1] in inits]
    assert first == order[:3] and first_weight_layers(model, 0) == []
    assert not set(first) & set(fp32_island_nodes(model))  # the islands are at the other end


INFO = SimpleNamespace(method="baseline")


def _fake_int8(monkeypatch, changes: dict[int, float], weight_layers: int = 20) -> list[int]:
    """Stub quantization and scoring: int8 with `keep` first layers in fp32 changes top-1 by changes[keep]."""
    quantized: list[int] = []

    def quantize(proto, info, path, calib, opts, shown, keep_first=0):
        quantized.append(keep_first)
        return SimpleNamespace(mode="static", calibration="c", quantized_layers=weight_layers - keep_first,
                               weight_layers=weight_layers, fp32_first=keep_first)

    def judge(fp32_pred, int8_pred, dataset, pre, opts, where, quant, scored=None):
        return Int8Report(mode="static", calibration="c", quantized_layers=quant.quantized_layers,
                          weight_layers=weight_layers, eval_source="val split", num_images=100, top1_fp32=80.0,
                          top1_int8=80.0 + changes[quant.fp32_first], agreement=0.9, fp32_first=quant.fp32_first)

    monkeypatch.setattr(pipeline, "_calibration_batches", lambda *a: SimpleNamespace(images=[], source="train"))
    monkeypatch.setattr(pipeline, "_quantize", quantize)
    monkeypatch.setattr(pipeline, "_judge_int8", judge)
    monkeypatch.setattr(pipeline, "_session", lambda path, opts: None)
    monkeypatch.setattr(pipeline, "_time_pair", lambda *a: {1: (2.0, 1.0)})
    return quantized


def test_int8_keeps_more_first_layers_until_val_top1_is_within_the_limit(monkeypatch):
    quantized = _fake_int8(monkeypatch, {0: -3.0, 1: -1.2, 2: -0.4, 4: 0.0})
    report = pipeline._export_int8(None, INFO, None, Path("m.int8.onnx"), None, None, ExportOptions(), "")
    assert quantized == [0, 1, 2] and report.fp32_first == 2 and report.top1_change == pytest.approx(-0.4)
    assert [k for k, _ in report.tried] == [0, 1, 2]


def test_int8_search_keeps_the_best_try_when_none_is_within_the_limit(monkeypatch):
    quantized = _fake_int8(monkeypatch, {0: -3.0, 1: -0.9, 2: -2.0, 4: -1.5}, weight_layers=8)
    report = pipeline._export_int8(None, INFO, None, Path("m.int8.onnx"), None, None, ExportOptions(), "")
    assert quantized == [0, 1, 2, 4, 1] and report.fp32_first == 1  # 4 = half the weight layers: stop, redo 1


def test_int8_max_drop_none_quantizes_once(monkeypatch):
    quantized = _fake_int8(monkeypatch, {0: -3.0})
    report = pipeline._export_int8(None, INFO, None, Path("m.int8.onnx"), None, None,
                                   ExportOptions(int8_max_drop=None), "")
    assert quantized == [0] and report.fp32_first == 0


def test_calibration_reads_the_train_split_only(monkeypatch):
    read = []

    def load_batches(dataset, splits, pre, count, where=""):
        read.append(splits)
        return SimpleNamespace(count=count, source=f"{splits[0]} images")

    import fgcli.data.rundata as rundata

    monkeypatch.setattr(rundata, "load_batches", load_batches)
    with_train = SimpleNamespace(splits={"train": [1], "val": [2], "test": [3]})
    calib = pipeline._calibration_batches(with_train, None, ExportOptions(calib_images=7), "d")
    assert read == [("train",)] and calib.source == "train images"
    no_train = SimpleNamespace(splits={"val": [2], "test": [3]})
    assert pipeline._calibration_batches(no_train, None, ExportOptions(), "d") is None  # dynamic, not val / test


def test_unknown_calibration_method_is_one_line(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    with pytest.raises(UserError, match="--calib-method kl: choose one of minmax, percentile, entropy"):
        export_checkpoint(ckpt, ExportOptions(int8=True, calib_method="kl"))


# -- the real path: which split the int8 search judges on -----------------------------------------------------
def _spy_splits(monkeypatch) -> list[str]:
    """Record every split the export reads images from (the real reader still runs)."""
    import fgcli.data.rundata as rundata

    read: list[str] = []
    real = rundata.iter_split

    def iter_split(dataset, split, *args, **kwargs):
        read.append(split)
        return real(dataset, split, *args, **kwargs)

    monkeypatch.setattr(rundata, "iter_split", iter_split)
    return read


def test_int8_search_without_a_val_split_is_refused_and_nothing_is_lost(tmp_path, monkeypatch):
    ckpt = make_demo_checkpoint(tmp_path, val_fraction=0)
    older = tmp_path / "model.onnx"
    older.write_bytes(b"an earlier export")
    read = _spy_splits(monkeypatch)
    result = CliRunner().invoke(app, ["export", str(ckpt), "--onnx", "--int8", "--calib-images", "4"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "has no val split" in text and "--val-fraction" in text and "never on test" in text
    assert older.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt"]  # no int8 file, no temp file
    assert read == []  # refused before reading any image
    # no search asked (Python API): quantized once, compared on random inputs, never on test
    report = export_checkpoint(ckpt, ExportOptions(int8=True, int8_max_drop=None, calib_images=4,
                                                   out=tmp_path / "api.onnx", bench_iters=1,
                                                   bench_batches=(1,))).int8
    assert report.eval_source == "random inputs" and report.top1_fp32 is None
    assert "test" not in read and "train" in read


def test_int8_search_judges_on_the_val_split(tmp_path, monkeypatch):
    """demo: 36 train images, 9 carved as val, 12 test; the int8 comparison scores the 9 val images."""
    ckpt = make_demo_checkpoint(tmp_path, val_fraction=0.25)
    read = _spy_splits(monkeypatch)
    result = CliRunner().invoke(app, ["export", str(ckpt), "--onnx", "--int8", "--calib-images", "4"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "int8: comparing with fp32 on the val split of demo" in text and "test split" not in text
    assert re.search(r"agreement with fp32 [0-9.]+% on 9 images", text)
    assert "test" not in read and set(read) == {"train", "val"}  # calibration on train, parity and int8 on val


def test_cpus_without_vnni_are_told_their_int8_kernels_can_saturate(monkeypatch):
    """CPUs without VNNI / AMX-INT8 add two u8 x s8 products in 16 bits: the export says so (8-bit weights stay
    the default: on flowers102 7-bit weights needed more fp32 layers, see the README)."""
    from fgcli import cpu

    avx2 = cpu.CpuInfo("EPYC", frozenset({"avx2", "fma"}), 2, 2000.0)
    vnni = cpu.CpuInfo("Xeon", frozenset({"avx2", "avx512f", "avx512_vnni"}), 2, 2000.0)
    assert not avx2.int8_dot_product and vnni.int8_dot_product
    assert cpu.CpuInfo("Core", frozenset({"avx2", "avx_vnni"}), 2, 2000.0).int8_dot_product
    monkeypatch.setattr(cpu, "cpu_info", lambda: avx2)
    assert "AVX2, no VNNI / AMX-INT8" in pipeline.saturation_note()
    monkeypatch.setattr(cpu, "cpu_info", lambda: vnni)
    assert pipeline.saturation_note() is None
    assert ExportOptions().int8_weights == "8"


def test_7_bit_weights_stay_in_the_reduced_range(fp32_files):
    """weight_bits=7 (onnxruntime's reduce_range): every int8 weight in [-64, 64]; 8 bits use [-127, 127]."""
    from onnx import TensorProto, numpy_helper

    calib = [np.random.default_rng(i).standard_normal((4, 3, SIZE, SIZE), dtype=np.float32) for i in range(2)]
    peaks = {}
    for bits in (7, 8):
        quant = quantize_int8(onnx.load(str(fp32_files["baseline"])), calib, "random", weight_bits=bits)
        weights = [numpy_helper.to_array(t) for t in quant.model.graph.initializer if t.data_type == TensorProto.INT8]
        assert weights and quant.weight_bits == bits
        peaks[bits] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert peaks[7] <= 64 < peaks[8] <= 127


def test_int8_weights_are_recorded_and_a_bad_value_is_one_line(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    with pytest.raises(UserError, match="--int8-weights 6: choose 8 or 7"):
        export_checkpoint(ckpt, ExportOptions(int8=True, int8_weights="6"))
    result = CliRunner().invoke(app, ["export", str(ckpt), "--onnx", "--int8", "--int8-weights", "7", "--no-verify",
                                      "--calib-images", "4"])
    assert result.exit_code == 0, result.output
    int8_file = next(tmp_path.glob("*.int8.onnx"))
    props = {p.key: p.value for p in onnx.load(str(int8_file)).metadata_props}
    assert props["int8_weight_bits"] == "7" and "7-bit weights" in " ".join(result.output.split())


# -- onnxruntime's chatter goes to fgcli's log (debug), not the terminal ---------------------------------------
CHATTER = ("Collecting tensor data", "Number of tensors", "histogram bins", "out-of-range", "WARNING:root")


def test_quantizer_chatter_becomes_debug_records_of_the_fgcli_log(fp32_files, capfd):
    """HERBS' graph makes the quantizer print its progress and `logging.warning` "Axis 1 is out-of-range" on
    the root logger: none of it reaches stdout / stderr, all of it reaches fgcli's log at DEBUG level."""
    import logging

    from fgcli.console import log

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    level, handlers, root_handlers = log.level, log.handlers[:], logging.getLogger().handlers[:]
    log.handlers = [handler]  # only this one: an earlier CLI test may have added the terminal's
    log.setLevel(logging.DEBUG)
    try:
        calib = [np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)]
        capfd.readouterr()
        quantize_int8(onnx.load(str(fp32_files["herbs"])), calib, "random")
        out, err = capfd.readouterr()
    finally:
        log.handlers = handlers
        log.setLevel(level)
    assert not any(text in out + err for text in CHATTER), out + err
    debug = "\n".join(r.getMessage() for r in records if r.levelno == logging.DEBUG)
    assert "onnxruntime.quantization: Collecting tensor data" in debug
    assert "onnxruntime.quantization: WARNING: Axis 1 is out-of-range" in debug
    assert logging.getLogger().handlers == root_handlers  # the root logger is left as it was


def _export_cli(ckpt, *flags):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "fgcli", *flags, "export", str(ckpt), "--onnx", "--int8",
                           "--calib-images", "4", "--int8-max-drop", "100", "--no-verify"],
                          env=env, capture_output=True, text=True, timeout=300)


def _assert_clean(normal: str, quiet_out: str, quiet_err: str) -> None:
    assert "int8: comparing with fp32 on the val split" in normal and "model.int8.onnx" in normal
    assert not any(text in normal for text in CHATTER), normal
    assert quiet_err == ""  # no log line, no warning, no library output
    assert not any(text in quiet_out for text in (*CHATTER, "INFO", "int8: comparing"))
    assert "Export: " in quiet_out  # the command's result table


def test_int8_export_prints_fgcli_lines_only_and_nothing_with_quiet(tmp_path):
    """Both runs in a subprocess, as a user starts them (its real stdout and stderr, no logging state left by
    other tests): the normal export prints fgcli's lines and none of the quantizer's; `--quiet` prints only the
    result table."""
    ckpt = make_demo_checkpoint(tmp_path, val_fraction=0.25)
    normal = _export_cli(ckpt)
    assert normal.returncode == 0, normal.stdout + normal.stderr
    quiet = _export_cli(ckpt, "--quiet")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    _assert_clean(" ".join((normal.stdout + normal.stderr).split()), quiet.stdout, quiet.stderr)


@pytest.mark.slow
def test_herbs_int8_export_in_a_subprocess_prints_no_library_chatter(tmp_path):
    """HERBS' graph also makes the quantizer warn on the root logger ("Axis 1 is out-of-range", which
    `logging` would print to stderr): both runs as a user starts them."""
    ckpt = make_demo_checkpoint(tmp_path, val_fraction=0.25, method="herbs", size=64, per_class=8)
    normal = _export_cli(ckpt)
    assert normal.returncode == 0, normal.stdout + normal.stderr
    quiet = _export_cli(ckpt, "--quiet")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    _assert_clean(" ".join((normal.stdout + normal.stderr).split()), quiet.stdout, quiet.stderr)
