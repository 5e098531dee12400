"""MGE-CNN exports to ONNX as one graph (CAM, ArgMax, box reductions, RoiAlign) and matches torch in ORT."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fgcli.config import Config
from fgcli.methods import build_method

ort = pytest.importorskip("onnxruntime")


class _Fused(torch.nn.Module):
    """What export ships (fused logits), plus the boxes so the crop path is compared too."""

    def __init__(self, method: torch.nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.method(images)
        return self.method.fuse(out), out["boxes"]


def _model() -> torch.nn.Module:
    cfg = Config()
    cfg.method = "mge"
    cfg.model.backbone = "test_resnet"
    cfg.mge.box_threshold = 0.6  # small boxes, so the crops are real zooms
    torch.manual_seed(0)
    return _Fused(build_method(cfg, 6)).eval()


def _export(model: torch.nn.Module, path: Path, dynamo: bool) -> None:
    example = (torch.randn(2, 3, 64, 64),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, example, str(path), dynamo=True, opset_version=18,
                              input_names=["images"], output_names=["logits", "boxes"],
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=256)}},
                              verbose=False)
        else:
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17,
                              input_names=["images"], output_names=["logits", "boxes"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "boxes": {0: "batch"}})


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["torchscript-opset17", "dynamo-opset18"])
def test_onnx_export_matches_torch_with_dynamic_batch(tmp_path: Path, dynamo: bool) -> None:
    import onnx

    model = _model()
    path = tmp_path / "mge.onnx"
    _export(model, path, dynamo)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = {n.op_type for n in graph.graph.node}
    assert {"RoiAlign", "ArgMax", "Resize", "ReduceMin", "ReduceMax"} <= ops
    for node in graph.graph.node:
        if node.op_type == "ArgMax":  # ties -> first index, as torch.argmax
            assert all(a.name != "select_last_index" or a.i == 0 for a in node.attribute)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    zoomed = 0
    for batch in (1, 5):
        images = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            logits, boxes = model(images)
        got_logits, got_boxes = session.run(None, {"images": images.numpy()})
        np.testing.assert_array_equal(got_boxes, boxes.numpy())
        np.testing.assert_allclose(got_logits, logits.numpy(), rtol=1e-4, atol=1e-5)
        zoomed += int((boxes[..., 2] - boxes[..., 0] < 63).sum())
    assert zoomed > 0  # the comparison exercised real crops, not only whole-image fallbacks


def test_argmax_ties_pick_the_first_index_in_torch_and_onnxruntime(tmp_path: Path) -> None:
    class ArgMax(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.argmax(dim=1)

    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    path = tmp_path / "argmax.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ArgMax(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["k"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert ArgMax()(x).tolist() == got.tolist() == [1, 0]
