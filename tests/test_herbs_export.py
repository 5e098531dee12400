"""HERBS and its selector export to ONNX, and ONNX Runtime ranks tied tokens exactly like torch (spec §2.6)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fgcli.config import resolve_config
from fgcli.methods import build_method
from fgcli.methods.herbs.selector import select_tokens

ort = pytest.importorskip("onnxruntime")


class _Selector(torch.nn.Module):
    def __init__(self, k: int, key: str) -> None:
        super().__init__()
        self.k, self.key = k, key

    def forward(self, feats: torch.Tensor, logits: torch.Tensor):
        sel = select_tokens(feats, logits, self.k, key=self.key)
        return sel.order, sel.features, sel.dropped, sel.threshold


def _export(module: torch.nn.Module, args: tuple, path, dynamo: bool, names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=names,
                              dynamic_shapes=tuple({0: batch} for _ in args))
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, opset_version=17,
                              dynamic_axes={n: {0: "batch"} for n in names})


def _tied_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits made of 3 distinct token rows repeated at random: ~100 exact ties per distinct score."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(batch, 3, 6, generator=g) * 4
    pattern = torch.randint(0, 3, (batch, 320), generator=g)
    logits = torch.gather(rows, 1, pattern.unsqueeze(2).expand(-1, -1, 6))
    feats = torch.arange(320.0).view(1, 320, 1).expand(batch, -1, 2).contiguous()
    return feats, logits


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("key", ["margin", "prob"])
def test_selector_ties_same_order_in_torch_and_onnxruntime(tmp_path, dynamo, key):
    module = _Selector(40, key).eval()
    feats, logits = _tied_inputs(2, seed=0)
    path = tmp_path / "selector.onnx"
    _export(module, (feats, logits), path, dynamo, ["feats", "logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seed in ((2, 0), (5, 1)):  # also a batch size other than the traced one
        feats, logits = _tied_inputs(batch, seed)
        order, sel_feats, dropped, tau = module(feats, logits)
        assert len(set(order[0].tolist())) == 320
        got = session.run(None, {"feats": feats.numpy(), "logits": logits.numpy()})
        np.testing.assert_array_equal(got[0], order.numpy())  # same tokens in the same order
        np.testing.assert_array_equal(got[1], sel_feats.numpy())
        np.testing.assert_array_equal(got[2], dropped.numpy())
        np.testing.assert_allclose(got[3], tau.numpy(), rtol=1e-6)
        # and the order is the lower-index-first rule, not just torch's own choice
        ranked = order[0].tolist()
        keys = {s: tuple(logits[0, s].tolist()) for s in range(320)}
        for a, b in zip(ranked, ranked[1:], strict=False):
            if keys[a] == keys[b]:
                assert a < b


def _tiny_herbs(backbone: str = "test_resnet", size: int = 64):
    torch.manual_seed(0)
    cfg = resolve_config(overrides=["method=herbs", f"model.backbone={backbone}", f"data.img_size={size}",
                                    "herbs.fpn_size=16", "herbs.num_selects=[0.25,0.25,0.5,0.5]"])
    return build_method(cfg, 5).eval()


class _Fused(torch.nn.Module):
    def __init__(self, method: torch.nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(images)


def _check_model_export(tmp_path, dynamo: bool, mixing: str) -> None:
    model = _Fused(_tiny_herbs() if mixing == "interp" else build_method(resolve_config(overrides=[
        "method=herbs", "model.backbone=test_resnet", "data.img_size=64", "herbs.fpn_size=16",
        "herbs.mixing=conv", "herbs.num_selects=[32,16,8,2]"]), 5)).eval()
    x = torch.randn(3, 3, 64, 64)
    path = tmp_path / "herbs.onnx"
    _export(model, (x,), path, dynamo, ["images"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (3, 1, 4):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("mixing", ["interp", "conv"])
def test_tiny_herbs_exports_with_torchscript_exporter(tmp_path, mixing):
    _check_model_export(tmp_path, dynamo=False, mixing=mixing)


@pytest.mark.slow
def test_tiny_herbs_exports_with_dynamo_exporter(tmp_path):
    _check_model_export(tmp_path, dynamo=True, mixing="interp")
