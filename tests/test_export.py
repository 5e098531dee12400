"""`fgcli export --onnx`: every method exports as one fused graph that onnxruntime runs like torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from exportkit import CLASSES, METHODS, SIZE, make_checkpoint_file
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from fgcli.errors import UserError
from fgcli.inference import OnnxPredictor
from fgcli.modelinfo import ModelInfo, sha256_file
from fgcli.parity import Parity, check, compare
from fgcli.tasks.export_model import ExportOptions, export_checkpoint, scaled_preprocess

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One default export per method (dynamic batch, verified on random inputs): (checkpoint, result)."""
    out = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method)
        ckpt = make_checkpoint_file(folder, method)
        out[method] = (ckpt, export_checkpoint(ckpt, ExportOptions(verify=True)))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_export_verifies_and_runs_at_other_batch_sizes(exported, method):
    ckpt, result = exported[method]
    path = result.files["onnx"]
    assert path == ckpt.with_suffix(".onnx") and path.is_file()
    onnx.checker.check_model(str(path), full_check=True)
    parity = result.parity["onnx"]
    assert parity.max_abs_dprob <= 1e-4 and parity.top1_agreement == 1.0 and parity.inputs == "random inputs"

    # traced at batch 2, run at 1 and 5: same probabilities as torch
    model, *_ = build_model_from_checkpoint(load_checkpoint(ckpt))
    pred = OnnxPredictor(path, device="cpu")
    assert pred.fixed_batch is None and pred.provider == "CPUExecutionProvider"
    g = np.random.default_rng(1)
    for n in (1, 5):
        x = g.standard_normal((n, 3, SIZE, SIZE), dtype=np.float32)
        logits, probs = pred(x)
        with torch.inference_mode():
            ref_logits = model.predict(torch.from_numpy(x))
        assert logits.shape == probs.shape == (n, len(CLASSES))
        np.testing.assert_allclose(probs, torch.softmax(ref_logits, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert (logits.argmax(1) == ref_logits.argmax(1).numpy()).all()


def test_metadata_round_trip(exported):
    ckpt, result = exported["mge"]
    props = {p.key: p.value for p in onnx.load(str(result.files["onnx"])).metadata_props}
    assert json.loads(props["classes"]) == CLASSES
    info = ModelInfo.from_props(props)
    raw = load_checkpoint(ckpt)
    assert info.preprocess.to_dict() == raw["preprocess"]
    assert (info.method, info.backbone, info.precision) == ("mge", "test_resnet", "fp32")
    assert info.source_sha256 == sha256_file(ckpt)
    assert info.extra["exporter"] in ("dynamo", "torchscript") and info.extra["dynamic_batch"] == "true"
    assert json.loads(info.extra["data_config"])["path"] == raw["config"]["data"]["path"]
    # what predict reads from the session equals what export wrote
    assert OnnxPredictor(result.files["onnx"], device="cpu").info == info
    # and the string form survives a second round trip unchanged
    assert ModelInfo.from_props(info.to_props()) == info


def test_metadata_of_a_foreign_onnx_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not written by `fgcli export`"):
        ModelInfo.from_props({"producer": "someone"}, source="x.onnx")


def test_static_batch_export_and_chunked_prediction(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    out = tmp_path / "static.onnx"
    result = export_checkpoint(ckpt, ExportOptions(out=out, dynamic_batch=False, verify=True))
    pred = OnnxPredictor(result.files["onnx"], device="cpu")
    assert pred.fixed_batch == 1
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    logits, _ = pred(x)  # three runs of batch 1
    rows = np.concatenate([pred(x[i:i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(logits, rows, atol=1e-6)


def test_img_size_rescales_preprocessing(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    result = export_checkpoint(ckpt, ExportOptions(img_size=96, verify=True))
    pre = OnnxPredictor(result.files["onnx"], device="cpu").info.preprocess
    assert (pre.img_size, pre.resize) == (96, 110)  # 64 / 73 crop ratio kept: round(73 * 96 / 64) = 110
    assert scaled_preprocess(pre, 96) is pre


def test_fp16_keeps_sensitive_ops_in_fp32_and_agrees(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "mge")
    result = export_checkpoint(ckpt, ExportOptions(fp16=True, verify=True))
    path = result.files["onnx-fp16"]
    assert path.name == "model.fp16.onnx"
    model = onnx.load(str(path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    # RoiAlign and ArgMax read fp32 tensors (their inputs are produced by fp32 nodes or casts to fp32)
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for node in model.graph.node:
        if node.op_type in ("RoiAlign", "ArgMax", "TopK", "Softmax"):
            assert types.get(node.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
    assert result.parity["onnx-fp16"].top1_agreement >= 0.99
    assert OnnxPredictor(path, device="cpu").info.precision == "fp16"


def test_verify_fails_clearly_over_tolerance():
    ok = Parity(num_images=4, max_abs_dprob=5e-5, top1_agreement=1.0, inputs="random inputs")
    check(ok, "fp32", "m.onnx")
    with pytest.raises(UserError, match=r"max \|Δprob\| 2.00e-04 > 0.0001"):
        check(Parity(4, 2e-4, 1.0, "random inputs"), "fp32", "m.onnx")
    with pytest.raises(UserError, match="top-1 agreement 98.00% < 99%"):
        check(Parity(50, 0.3, 0.98, "val images"), "fp16", "m.fp16.onnx")
    check(Parity(100, 0.3, 0.99, "val images"), "fp16", "m.fp16.onnx")


def test_compare_reports_hand_computed_numbers():
    images = np.zeros((3, 3, 2, 2), dtype=np.float32)
    ref = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    cand = np.array([[0.6, 0.4], [0.45, 0.55], [0.5, 0.5]])
    calls = iter([ref[:2], ref[2:]])
    cands = iter([cand[:2], cand[2:]])
    # exact=False: these stand-ins ignore their input, so the probe of images at a decision (test_parity.py)
    # has nothing to re-run
    parity = compare(lambda x: next(calls), lambda x: next(cands), images, "test", batch_size=2, exact=False)
    assert parity.max_abs_dprob == pytest.approx(0.1)
    assert parity.top1_agreement == pytest.approx(1.0)
    nan = compare(lambda x: ref, lambda x: np.full_like(ref, np.nan), images, "test", batch_size=3)
    assert nan.max_abs_dprob == float("inf")


def test_cli_export_writes_the_file_and_reports(tmp_path):
    ckpt = make_checkpoint_file(tmp_path, "baseline", name="best.pt")
    out = tmp_path / "deploy" / "net.onnx"
    result = runner.invoke(app, ["export", str(ckpt), "--onnx", "--out", str(out), "--exporter", "torchscript"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "max |Δprob|" in result.output and "fgcli predict" in result.output
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["exporter"] == "torchscript" and props["opset"] == "17"
    assert props["source_checkpoint"] == "best.pt"


def test_cli_export_errors_are_one_line(tmp_path):
    missing = runner.invoke(app, ["export", str(tmp_path / "nope.pt"), "--onnx"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    bad = runner.invoke(app, ["export", str(corrupt), "--onnx"])
    assert bad.exit_code == 1 and "corrupt or truncated" in bad.output and "Traceback" not in bad.output
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    no_format = runner.invoke(app, ["export", str(ckpt)])
    assert no_format.exit_code == 1 and "--onnx" in no_format.output
    wrong_out = runner.invoke(app, ["export", str(ckpt), "--onnx", "--out", str(tmp_path / "x.bin")])
    assert wrong_out.exit_code == 1 and "must end in .onnx" in wrong_out.output
    old_opset = runner.invoke(app, ["export", str(ckpt), "--onnx", "--opset", "13", "--exporter", "dynamo"])
    assert old_opset.exit_code == 1 and "--opset 13" in old_opset.output
    unknown = runner.invoke(app, ["export", str(ckpt), "--onnx", "--exporter", "tvm"])
    assert unknown.exit_code == 1 and "unknown exporter 'tvm'" in unknown.output


def test_truncated_onnx_is_a_clear_error(exported, tmp_path):
    _, result = exported["baseline"]
    data = result.files["onnx"].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="truncated or corrupt"):
        OnnxPredictor(truncated, device="cpu")
