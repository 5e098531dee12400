"""onnxruntime providers: chosen explicitly, CUDA only when it really runs, the one in use reported."""

from __future__ import annotations

import pytest
from exportkit import make_checkpoint_file

import fgcli.inference as inference
from fgcli.errors import UserError
from fgcli.inference import CPU_EP, CUDA_EP, create_session, resolve_providers, session_options
from fgcli.tasks.export_model import ExportOptions, export_checkpoint


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("providers")
    return export_checkpoint(make_checkpoint_file(folder, "baseline"), ExportOptions(verify=False)).files["onnx"]


def test_resolve_providers(monkeypatch):
    assert resolve_providers(None, "cpu") == [CPU_EP]
    monkeypatch.setattr(inference, "cuda_usable", lambda: False)
    assert resolve_providers(None, "auto") == [CPU_EP]  # CUDA listed by onnxruntime-gpu, but no GPU
    with pytest.raises(UserError, match="no usable CUDA GPU"):
        resolve_providers(None, "cuda")
    monkeypatch.setattr(inference, "cuda_usable", lambda: True)
    assert resolve_providers(None, "cuda:1") == [(CUDA_EP, {"device_id": 1}), CPU_EP]
    assert resolve_providers(["cpu"], "auto") == [CPU_EP]
    with pytest.raises(UserError, match="unknown onnxruntime provider 'NoSuchExecutionProvider'"):
        resolve_providers(["NoSuchExecutionProvider"])
    with pytest.raises(UserError, match="--device gpu is not valid"):
        resolve_providers(None, "gpu")


def test_session_options_threads_and_optimisation():
    import onnxruntime as ort

    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_cuda_that_does_not_start_falls_back_to_cpu(onnx_file, monkeypatch):
    """On a machine where torch 'sees' a GPU but onnxruntime cannot start CUDA, the session runs on CPU and
    says so (checked with get_providers after creation, never trusted from the listing)."""
    import onnxruntime as ort

    warnings: list[str] = []
    monkeypatch.setattr(inference, "cuda_usable", lambda: True)
    monkeypatch.setattr(inference.log, "warning", warnings.append)
    session = create_session(onnx_file, device="auto")
    if ort.get_device() == "GPU" and session.get_providers()[0] == CUDA_EP:
        pytest.skip("this machine really runs onnxruntime on CUDA")
    assert session.get_providers()[0] == CPU_EP
    assert any("could not use CUDAExecutionProvider; running on CPUExecutionProvider" in w for w in warnings)
    with pytest.raises(UserError, match="could not start CUDAExecutionProvider"):
        create_session(onnx_file, device="cuda")
