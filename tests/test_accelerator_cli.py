"""Every method from the CLI on the accelerator paths that run on CPU: bf16 autocast (`--amp`, the code path of
CUDA bf16) with channels_last forced on trains, resumes, evaluates and exports (fp32 ONNX verified against
the fp32 eager model on the same weights, `--fp16` run on onnxruntime's CPU provider and checked node by node);
`--compile` (inductor) against eager and DDP under gloo with 2 processes are `slow`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.rundir import read_results_csv

runner = CliRunner()

METHOD_SETS = {"baseline": [],
               "herbs": ["--set", "herbs.fpn_size=16", "--set", "herbs.num_selects=[0.25,0.25,0.5,0.5]"],
               "mge": ["--set", "mge.part_mult=2", "--set", "mge.gate_hidden=16"]}
DATA = ["--data", "demo", "--set", "data.demo_size=32", "--set", "data.demo_classes=3",
        "--set", "data.demo_per_class=6", "--set", "data.val_fraction=0.34"]
COMMON = ["--backbone", "test_resnet", "--img-size", "32", "--batch-size", "6", "--workers", "0", "--lr", "0.01",
          "--device", "cpu", "--seed", "3", "--set", "optim.name=adamw", *DATA]
METHODS = tuple(METHOD_SETS)


def train_args(method: str, *extra: str) -> list[str]:
    return ["train", "--method", method, *COMMON, *METHOD_SETS[method], *extra]


def losses(run) -> list[float]:
    rows = read_results_csv(run / "results.csv")
    return [float(v) for r in rows for k, v in r.items() if k.startswith("train/") and k != "train/skipped"]


@pytest.fixture(scope="module", params=METHODS)
def bf16_run(request, tmp_path_factory):
    """One epoch under `--amp` bf16 with channels_last forced on, resumed for a second one."""
    method = request.param
    tmp = tmp_path_factory.mktemp(f"{method}-bf16")
    result = runner.invoke(app, train_args(method, "--epochs", "1", "--amp", "--set", "train.amp_dtype=bf16",
                                           "--set", "model.channels_last=always", "--project", str(tmp),
                                           "--name", "run"))
    assert result.exit_code == 0, result.output
    run = tmp / "run"
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    return method, run


def test_bf16_channels_last_trains_and_resumes(bf16_run) -> None:
    method, run = bf16_run
    saved = yaml.safe_load((run / "args.yaml").read_text())
    assert saved["train"]["amp"] is True and saved["train"]["amp_dtype"] == "bf16"
    assert saved["model"]["channels_last"] == "always"
    assert "amp torch.bfloat16 | channels_last" in (run / "log.txt").read_text()
    rows = read_results_csv(run / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    values = losses(run)
    assert values and all(math.isfinite(v) for v in values)
    assert all(r["train/skipped"] in ("0", "0.0") for r in rows)
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["method"] == method
    # AMP keeps fp32 master weights: the checkpoint (and everything exported from it) is fp32
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_bf16_run_evaluates(bf16_run, tmp_path) -> None:
    _, run = bf16_run
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(run / "weights" / "last.pt"), "--data", "demo", "--split", "val",
                                 "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 6 and 0.0 <= metrics["top1"] <= 100.0


def test_bf16_run_exports_fp32_and_fp16_onnx(bf16_run, tmp_path) -> None:
    """`fgcli export best.pt --onnx --fp16 --verify`: the fp32 graph matches the fp32 eager model on the AMP
    run's weights (verify's 1e-4 probability tolerance), the fp16 graph runs on the CPU provider (verify: top-1
    agreement) and keeps fp32 where the precision matters."""
    from fgcli.formats.onnx.fp16 import FP32_OPS
    from fgcli.formats.onnx.graph import fp32_island_nodes
    from fgcli.inference import OnnxPredictor

    method, run = bf16_run
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(run / "weights" / "best.pt"), "--onnx", "--fp16", "--verify",
                                 "--out", str(out), "--providers", "cpu"])
    assert result.exit_code == 0, result.output
    assert "max |Δprob|" in result.output
    half_path = out.with_name("model.fp16.onnx")
    assert out.is_file() and half_path.is_file()
    half = onnx.load(str(half_path))
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert any(t.data_type == fp16 for t in half.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [fp32]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [fp32] * len(half.graph.output)
    # which nodes stayed fp32: every precision-sensitive op reads fp32 inputs, and the fp32 islands of the
    # fp32 graph (fused head, final classifiers, HERBS ranking heads, MGE-CNN CAM -> box) were not converted
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(half).graph.value_info}
    types.update({t.name: t.data_type for t in half.graph.initializer})
    sensitive = [n for n in half.graph.node if n.op_type in FP32_OPS]
    assert sensitive
    for node in sensitive:
        for name in node.input[:1]:  # never fp16 (integer inputs, e.g. a Range over token offsets, are fine)
            assert types.get(name, fp32) != fp16, (node.op_type, node.name)
    islands = set(fp32_island_nodes(onnx.load(str(out))))
    kept = {n.name for n in half.graph.node} & islands
    assert kept and len(kept) >= len(islands) // 2
    expected = {"baseline": set(), "herbs": {"TopK"}, "mge": {"RoiAlign"}}[method]
    assert expected <= {n.op_type for n in sensitive}
    # the fp16 file on onnxruntime's CPU provider agrees with the fp32 file
    g = np.random.default_rng(0)
    x = g.standard_normal((4, 3, 32, 32), dtype=np.float32)
    _, p32 = OnnxPredictor(out, device="cpu")(x)
    _, p16 = OnnxPredictor(half_path, device="cpu")(x)
    assert np.isfinite(p16).all() and np.abs(p16 - p32).max() < 0.05


# -- slow: --compile (inductor on CPU) and DDP with 2 gloo processes ------------------------------------
#: HERBS' token selection is discrete, and on a random tiny model the token scores lie within ~1e-3 of each
#: other: rounding-level differences between inductor's kernels and eager reorder near-ties, which changes the
#: combiner's input and from there the gradients (the selection is exact where scores are apart:
#: test_accelerator_paths.py). Its losses are compared loosely and its weights only for being finite.
COMPILE_RTOL = {"baseline": 2e-3, "herbs": 5e-2, "mge": 2e-3}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_compile_matches_eager(method, tmp_path) -> None:
    """One epoch (2 steps, SGD: weight differences stay proportional to gradient differences) with `--compile`
    (inductor) and without: same losses and weights within tolerance, no fallback to eager; the compiled run's
    checkpoint has plain keys and evaluates."""
    runs = {}
    for tag, extra in (("eager", []), ("compiled", ["--compile"])):
        result = runner.invoke(app, train_args(method, "--epochs", "1", "--deterministic", "--set", "optim.name=sgd",
                                               *extra, "--project", str(tmp_path), "--name", tag))
        assert result.exit_code == 0, result.output
        runs[tag] = tmp_path / tag
    log = (runs["compiled"] / "log.txt").read_text()
    assert "| compile" in log and "could not compile" not in log
    rtol = COMPILE_RTOL[method]
    np.testing.assert_allclose(losses(runs["compiled"]), losses(runs["eager"]), rtol=rtol, atol=rtol / 10)
    a = torch.load(runs["eager"] / "weights" / "last.pt", weights_only=True)["model"]
    b = torch.load(runs["compiled"] / "weights" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()  # no `_orig_mod.` prefixes
    for key, value in a.items():
        if not value.is_floating_point():
            continue
        assert torch.isfinite(b[key]).all(), key
        if method != "herbs":
            torch.testing.assert_close(b[key], value, rtol=rtol, atol=rtol / 10,
                                       msg=lambda m, key=key: f"{key}: {m}")
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(runs["compiled"] / "weights" / "last.pt"), "--data", "demo",
                                 "--split", "val", "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # resumed under --compile for a second epoch (inductor's cache makes the second compile cheap), then exported
    resumed = runner.invoke(app, ["train", "--resume", str(runs["compiled"]), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert len(read_results_csv(runs["compiled"] / "results.csv")) == 2
    assert "could not compile" not in (runs["compiled"] / "log.txt").read_text()
    exported = runner.invoke(app, ["export", str(runs["compiled"] / "weights" / "last.pt"), "--onnx", "--verify",
                                   "--out", str(tmp_path / "compiled.onnx")])
    assert exported.exit_code == 0, exported.output


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


DDP_CASES = {  # the plain baseline is tests/test_engine_ddp.py
    "baseline-find_unused": ("baseline", ["--set", "train.find_unused_parameters=true"]),
    "herbs-lambda_s0": ("herbs", ["--set", "herbs.lambda_s=0"]),  # the default: every parameter used
    "herbs-lambda_r0": ("herbs", ["--set", "herbs.lambda_r=0"]),  # td heads unused: find_unused_parameters
    "mge-staged": ("mge", ["--set", "mge.schedule=staged", "--set", "mge.stage_epochs=1"]),
    # head-first: the trunk has no gradients in epoch 1, then joins the graph
    "herbs-freeze_epochs": ("herbs", ["--set", "model.freeze_epochs=1"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DDP_CASES))
def test_ddp_two_gloo_processes(case, tmp_path) -> None:
    """2 processes under torchrun (gloo), with gradient accumulation (DDP's no_sync) and the graph options
    `ddp_options` picks: HERBS with a loss term off (parameters left unused: find_unused_parameters) neither
    hangs nor errors (the timeout), MGE-CNN's staged schedule keeps every parameter in the graph, and
    `train.find_unused_parameters=true` runs too. (static_graph, tried first, fails here with no_sync.)"""
    method, extra = DDP_CASES[case]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fgcli",
           "--quiet", *train_args(method, "--epochs", "2", "--batch-size", "3", "--accum-steps", "2", *extra,
                                  "--project", str(tmp_path), "--name", "ddp")]
    try:
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:  # a DDP hang (a rank waiting for gradients that never come)
        pytest.fail(f"torchrun did not finish in 300 s: {e.stdout}\n{e.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    ckpt = torch.load(tmp_path / "ddp" / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2  # 12 train images / (2 x 3) / accum 2 = 1 per epoch
    assert all(math.isfinite(v) for v in losses(tmp_path / "ddp"))
