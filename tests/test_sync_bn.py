"""`train.sync_bn`: the conversion keeps every method's outputs on a backbone with timm's BatchNormAct layers
(EfficientNet), `model.freeze_bn_stats` still fixes the converted layers, and CPU runs are refused clearly
(torch's SyncBatchNorm cannot synchronise CPU tensors)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn

from fgcli.config import resolve_config
from fgcli.engine.distributed import check_sync_bn, convert_sync_bn
from fgcli.errors import UserError
from fgcli.methods import build_method, get_method, list_methods

#: smaller necks for the methods that have one (any other registered method runs with its defaults)
SMALL = {"herbs": ["herbs.fpn_size=8", "herbs.num_selects=[0.25,0.25,0.25,0.25]"],
         "mge": ["mge.part_mult=2", "mge.gate_hidden=8"]}


def _model(method: str, *sets: str) -> nn.Module:
    cfg = resolve_config(None, None, {"method": method, "model.backbone": "test_efficientnet", "data.img_size": 64},
                         [*SMALL.get(method, []), *sets])
    torch.manual_seed(0)
    model = build_method(cfg, 5)
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():  # statistics away from (0, 1), so that a layer that ignored them would show
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("method", list_methods())
def test_sync_bn_conversion_keeps_outputs_and_state_dict(method: str) -> None:
    model = _model(method).eval()
    fused = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    assert fused, "test_efficientnet has BatchNormAct2d layers (norm + activation in one module)"
    keys = list(model.state_dict())
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.predict(images)
        converted = convert_sync_bn(model).eval()  # eval: SyncBatchNorm runs without a process group
        after = converted.predict(images)
    assert all(isinstance(m, nn.SyncBatchNorm) for m in _batch_norms(converted))
    assert sum(isinstance(m, SyncBatchNormAct) for m in converted.modules()) == fused
    assert list(converted.state_dict()) == keys  # checkpoints load into an unconverted model (export, eval)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_torch_converter_would_drop_the_activation() -> None:
    """What the test above guards against: torch's own converter changes the outputs of the same weights."""
    model = _model("baseline").eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.predict(images)
        after = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval().predict(images)
    assert (after - before).abs().max() > 0.1


# the methods whose trunk trains (the probe's never does)
@pytest.mark.parametrize("method", [m for m in list_methods() if get_method(m).fitted_by == "loop"])
def test_frozen_bn_statistics_hold_for_synchronised_layers(method: str) -> None:
    model = convert_sync_bn(_model(method, "model.freeze_bn_stats=true"))
    trunk_bns = [m for trunk in model.backbones() for m in _batch_norms(trunk)]
    assert trunk_bns and all(isinstance(m, nn.SyncBatchNorm) for m in trunk_bns)
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in trunk_bns]
    model.train()
    assert model.training and not any(m.training for m in trunk_bns)
    targets = torch.tensor([0, 1, 2, 3])
    total, _ = model.loss(model(torch.randn(4, 3, 64, 64), targets), targets, 0)  # no process group: local BN
    total.backward()
    for m, (mean, var) in zip(trunk_bns, stats, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert all(m.weight.grad is not None for m in trunk_bns)  # their scale and shift still train


def test_sync_bn_on_cpu_is_refused_with_the_flag_to_drop() -> None:
    with pytest.raises(UserError, match=r"train\.sync_bn=true needs GPUs.*--set train\.sync_bn=true"):
        check_sync_bn(torch.device("cpu"))
    check_sync_bn(torch.device("cuda"))  # a type check only: no GPU needed


@pytest.mark.slow
def test_sync_bn_under_torchrun_on_cpu_stops_with_one_line(tmp_path) -> None:
    """The DDP path (2 gloo processes): refused before any run folder is made, not a ValueError at the first
    training step."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fgcli",
         "--quiet", "train", "--method", "baseline", "--data", "demo", "--backbone", "test_efficientnet",
         "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "1",
         "--set", "data.demo_size=32", "--set", "data.demo_classes=2", "--set", "data.demo_per_class=8",
         "--set", "data.val_fraction=0.25", "--set", "train.sync_bn=true", "--project", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert errors and all("train.sync_bn=true needs GPUs" in line for line in errors), out
    assert "Traceback" not in proc.stdout and "ValueError" not in out, out
    assert list(tmp_path.iterdir()) == []
