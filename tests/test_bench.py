"""`fgcli bench`: latency statistics, backends per model type, table and CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from exportkit import make_checkpoint_file
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.errors import UserError
from fgcli.tasks.bench_formats import parse_backends, parse_ints, rows_csv, speedups
from fgcli.tasks.export_model import ExportOptions, export_checkpoint
from fgcli.timing import BenchRow, summarize

runner = CliRunner()


def test_summarize_by_hand():
    times = np.array([0.010, 0.020, 0.030, 0.040, 0.100])  # seconds per batch of 4
    row = summarize(times, "onnx", "cpu", batch=4, img_size=64, threads=2)
    assert row.p50_ms == pytest.approx(30.0)
    assert row.p90_ms == pytest.approx(76.0)  # numpy linear interpolation: 40 + 0.6 * 60
    assert row.mean_ms == pytest.approx(40.0)
    assert row.throughput == pytest.approx(100.0)  # 4 images / 40 ms


def test_speedups_use_median_latency():
    def row(backend, batch, p50):
        return BenchRow(backend, "cpu", batch, 64, 2, 5, p50, p50, p50, 1.0)

    rows = [row("torch", 1, 30.0), row("onnx", 1, 10.0), row("torch", 8, 100.0), row("onnx", 8, 80.0),
            row("onnx", 32, 5.0)]
    assert speedups(rows) == {1: 3.0, 8: 1.25}


def test_parse_flags(tmp_path):
    assert parse_ints("1, 8,32", "--batch-sizes") == [1, 8, 32]
    with pytest.raises(UserError, match="--batch-sizes 'a,b'"):
        parse_ints("a,b", "--batch-sizes")
    with pytest.raises(UserError, match="positive"):
        parse_ints("0,4", "--batch-sizes")
    # every format MODEL can be written to (fgcli.formats): an .onnx converts to the IR, a .pt exports to both
    assert parse_backends(None, tmp_path / "m.onnx") == ["onnx", "openvino"]
    assert parse_backends(None, tmp_path / "m.pt") == ["torch", "onnx", "openvino"]
    assert parse_backends(None, tmp_path / "m.xml") == ["openvino"]
    assert parse_backends(None, tmp_path / "m.xml", checkpoint="m.pt") == ["torch", "openvino"]
    assert parse_backends("onnx,torch,onnx", tmp_path / "m.pt") == ["onnx", "torch"]
    with pytest.raises(UserError, match="only has the onnx, openvino backends. Give the checkpoint"):
        parse_backends("torch", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="unknown backend 'tvm'"):
        parse_backends("tvm", tmp_path / "m.pt")


def test_bench_checkpoint_both_backends_and_csv(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    out = tmp_path / "bench.csv"
    result = runner.invoke(app, ["bench", str(ckpt), "--batch-sizes", "1,3", "--warmup", "1", "--iters", "3",
                                 "--threads", "1", "--out", str(out), "--device", "cpu", "--backends", "torch,onnx"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [(r["backend"], r["batch"]) for r in rows] == [("torch", "1"), ("torch", "3"), ("onnx", "1"), ("onnx", "3")]
    assert all(r["threads"] == "1" and r["iters"] == "3" and float(r["p50_ms"]) > 0 for r in rows)
    assert rows[2]["device"] == "onnxruntime CPUExecutionProvider"
    assert "vs torch" in result.output and rows_csv([]).startswith("backend,device,batch")


def test_bench_onnx_file_only_onnx(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    onnx_path = export_checkpoint(ckpt, ExportOptions(verify=False, dynamic_batch=False)).files["onnx"]
    result = runner.invoke(app, ["bench", str(onnx_path), "--batch-sizes", "1,2", "--iters", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "static batch of 1" in result.output  # batch 2 skipped with a note
    wrong = runner.invoke(app, ["bench", str(onnx_path), "--backends", "torch"])
    assert wrong.exit_code == 1 and "only has the onnx" in wrong.output
    size = runner.invoke(app, ["bench", str(onnx_path), "--img-size", "96", "--iters", "1"])
    assert size.exit_code == 1 and "exported for 64x64" in size.output
