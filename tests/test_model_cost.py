"""benchmarks/model_cost.py: the MACs and parameters it reports, against counts made by hand or by timm."""

from __future__ import annotations

import pytest
import timm
from benchkit import load_benchmark

TINY = ["model.backbone=test_resnet", "herbs.fpn_size=16", "mge.part_mult=2", "mge.gate_hidden=16"]


@pytest.fixture(scope="module")
def cost():
    return load_benchmark("model_cost")


def test_baseline_is_its_trunk_plus_one_linear_head(cost) -> None:
    got = cost.model_cost("baseline_lite0_224_cub", 7, TINY, img_size=64)
    trunk = timm.create_model("test_resnet", num_classes=0)
    features = trunk.num_features
    with_head = timm.create_model("test_resnet", num_classes=7)
    assert got.mparams * 1e6 == pytest.approx(sum(p.numel() for p in with_head.parameters()))
    trunk_only = cost.model_cost("baseline_lite0_224_cub", 1, TINY, img_size=64)
    # one image: the head adds features x classes multiply-accumulates (7 classes against 1)
    assert (got.gmacs - trunk_only.gmacs) * 1e9 == pytest.approx(features * 6, abs=1)
    assert got.img_size == 64


def test_conv_cost_grows_with_the_pixels_and_methods_cost_more(cost) -> None:
    small = cost.model_cost("baseline_lite0_224_cub", 5, TINY, img_size=64)
    large = cost.model_cost("baseline_lite0_224_cub", 5, TINY, img_size=128)
    assert 3.5 < large.gmacs / small.gmacs <= 4.0  # 4x the pixels; the head's cost does not grow
    herbs = cost.model_cost("herbs_lite0_224_cub", 5, TINY, img_size=64)
    mge = cost.model_cost("mge_lite0_224_cub", 5, TINY, img_size=64)
    assert herbs.gmacs > small.gmacs and mge.gmacs > 3 * small.gmacs  # MGE-CNN: four trunks, three inputs


def test_table_by_hand(cost) -> None:
    rows = cost.table([cost.Cost("a", 224, 0.5, 3.0), cost.Cost("b", 224, 1.25, 4.5)])
    assert rows[2] == "| a | 224 | 0.50 | 1.00 | 3.00 |"
    assert rows[3] == "| b | 224 | 1.25 | 2.50 | 4.50 |"


def test_cli_prints_the_table_and_refuses_one_label_for_many(cost, capsys) -> None:
    cost.main(["--recipes", "baseline_lite0_224_cub", "--classes", "3", "--img-size", "32", "--label", "tiny",
               *[a for s in TINY for a in ("--set", s)]])
    out = capsys.readouterr().out
    assert "| tiny | 32 |" in out and "3 classes" in out
    with pytest.raises(SystemExit):
        cost.main(["--recipes", "a", "b", "--label", "x"])
