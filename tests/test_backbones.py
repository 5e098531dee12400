"""`model.output_stride`: timm's dilated last stages give finer maps and still count as a 4-stage pyramid."""

from __future__ import annotations

import pytest
import torch

from fgcli.backbones import Backbone
from fgcli.config import resolve_config
from fgcli.errors import UserError
from fgcli.methods import build_method


@pytest.mark.parametrize("stride, grids", [(None, [16, 8, 4, 2]), (16, [16, 8, 4, 4]), (8, [16, 8, 8, 8])])
def test_output_stride_sets_the_grid_of_the_last_stages(stride, grids) -> None:
    backbone = Backbone("test_resnet", output_stride=stride)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == grids
    assert not backbone.single_scale  # HERBS / MGE-CNN still accept it


def test_herbs_and_mge_run_on_a_dilated_backbone() -> None:
    x = torch.randn(2, 3, 64, 64)
    common = ["model.backbone=test_resnet", "model.output_stride=8", "data.img_size=64"]
    torch.manual_seed(0)
    herbs = build_method(resolve_config(overrides=["method=herbs", "herbs.fpn_size=16", "herbs.num_selects=[64,32,16,8]",
                                                   *common]), 3).eval()
    assert list(herbs._run(x).sizes) == [(16, 16), (8, 8), (8, 8), (8, 8)]
    assert herbs.attention(x)["score4"].shape == (2, 64, 64)
    mge = build_method(resolve_config(overrides=["method=mge", "mge.experts=2", *common]), 3).eval()
    trunks = [m for m in mge.modules() if isinstance(m, Backbone)]
    assert trunks and all(t(x)[-1].shape[-1] == 8 for t in trunks)
    assert mge.fuse(mge(x)).shape == (2, 3)


def test_output_stride_is_validated() -> None:
    with pytest.raises(UserError, match="model.output_stride must be 8, 16, 32 or null"):
        resolve_config(overrides=["model.output_stride=12"])
    with pytest.raises(UserError, match="cannot be built"):
        Backbone("test_vit", output_stride=8)  # a ViT has no dilated stages in timm
