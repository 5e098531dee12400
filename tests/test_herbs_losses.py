"""HERBS loss terms, temperature schedule and fusion against hand-computed values (spec/herbs.md §3-4)."""

from __future__ import annotations

import math

import pytest
import torch

from fgcli.config import resolve_config
from fgcli.methods.herbs import losses
from fgcli.methods.herbs.model import HEADS, Herbs

LN3 = math.log(3.0)


def test_temperature_schedule_official():
    # T_e = 64 * 0.5^(e // 10): 64 for epochs 0-9, 32 for 10-19, ..., 0.5 for 70-79
    assert [losses.temperature(e) for e in (0, 9, 10, 19, 20, 39, 40, 69, 70, 79)] == \
        [64, 64, 32, 32, 16, 8, 4, 1, 0.5, 0.5]


def test_temperature_schedule_custom_step():
    # temp_step = epochs / 8 (e.g. 2 for a 16-epoch run) reaches 0.5 in the last block as well
    assert [losses.temperature(e, 64.0, 2) for e in (0, 1, 2, 13, 14, 15)] == [64, 64, 32, 1, 0.5, 0.5]
    assert losses.temperature(3, t0=10.0, step=1) == 1.25


def test_refinement_official_and_token_reduction():
    # one token, 2 classes, T = 2: q = softmax([2 ln3, 0] / 2) = [3/4, 1/4], p = softmax([0, 2 ln3] / 2) = [1/4, 3/4]
    bu = torch.tensor([[[2 * LN3, 0.0]]])
    td = torch.tensor([[[0.0, 2 * LN3]]])
    kl = 0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.75)  # = ln(3) / 2
    assert losses.refinement_loss(td, bu, 2.0, "official").item() == pytest.approx(kl / 2, rel=1e-6)  # / (B·S·C)
    assert losses.refinement_loss(td, bu, 2.0, "token").item() == pytest.approx(kl, rel=1e-6)  # / (B·S)


def test_refinement_averages_over_tokens_and_detaches_target():
    # token 1: q = [3/4, 1/4], p = [1/2, 1/2]; token 2: identical distributions (KL 0); T = 1
    bu = torch.tensor([[[LN3, 0.0], [0.0, 0.0]]], requires_grad=True)
    td = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]], requires_grad=True)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    value = losses.refinement_loss(td, bu, 1.0, "official")
    assert value.item() == pytest.approx(kl1 / (1 * 2 * 2), rel=1e-6)
    value.backward()
    assert bu.grad is None  # the bottom-up target is detached
    # d/d td of Σ q (log q - log p) / 4 = (p - q) / 4 for token 1
    assert td.grad[0, 0].tolist() == pytest.approx([(0.5 - 0.75) / 4, (0.5 - 0.25) / 4], abs=1e-7)


def test_refinement_zero_probability_target_is_finite():
    bu = torch.tensor([[[1000.0, -1000.0]]])  # q = [1, 0] exactly in fp32
    td = torch.tensor([[[0.0, 0.0]]])
    # KL = 1·ln(1 / 0.5) + 0 (0·log 0 = 0), official reduction / 2
    assert losses.refinement_loss(td, bu, 1.0).item() == pytest.approx(math.log(2.0) / 2, rel=1e-6)


def test_drop_loss_mean_and_sum():
    # tanh values [0, .5] and [-.5, 0] -> (t + 1)^2 = 1, 2.25, 0.25, 1
    dropped = torch.tensor([[[0.0, math.atanh(0.5)], [math.atanh(-0.5), 0.0]]])
    assert losses.drop_loss(dropped, "mean").item() == pytest.approx((1 + 2.25 + 0.25 + 1) / 4, rel=1e-6)
    assert losses.drop_loss(dropped, "sum").item() == pytest.approx(((1 + 2.25) + (0.25 + 1)) / 2, rel=1e-6)


def test_drop_loss_empty_set_is_zero_not_nan():
    dropped = torch.zeros(3, 0, 5, requires_grad=True)
    for reduction in ("mean", "sum"):
        value = losses.drop_loss(dropped, reduction)
        assert value.item() == 0.0 and torch.isfinite(value)


def test_selected_loss_every_token_against_its_image_label():
    # sample 0 (label 0): tokens [ln3, 0] -> -ln(3/4), [0, 0] -> ln 2; sample 1 (label 1): [ln3, 0] -> -ln(1/4), [0, ln3] -> -ln(3/4)
    sel = torch.tensor([[[LN3, 0.0], [0.0, 0.0]], [[LN3, 0.0], [0.0, LN3]]])
    expected = (-math.log(0.75) + math.log(2) - math.log(0.25) - math.log(0.75)) / 4
    assert losses.selected_loss(sel, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_image_ce():
    assert losses.image_ce(torch.tensor([[LN3, 0.0]]), torch.tensor([1])).item() == pytest.approx(math.log(4), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_herbs() -> Herbs:
    cfg = resolve_config(overrides=["method=herbs", "model.backbone=test_resnet", "data.img_size=32",
                                    "herbs.fpn_size=8", "herbs.num_selects=[4,2,1,1]"])
    return Herbs(cfg, num_classes=2)


def _outputs() -> dict[str, torch.Tensor]:
    """A hand-made forward output for B = 1, C = 2, label 0 (values chosen for easy hand computation)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(1, 5):
        out[f"td{i}"] = torch.zeros(1, 2)
        out[f"tok_td{i}"] = torch.zeros(1, 1, 2)  # p = [1/2, 1/2]
        out[f"tok_bu{i}"] = torch.tensor([[[64 * LN3, 0.0]]])  # at T = 64: q = [3/4, 1/4]
        out[f"bu{i}"] = torch.tensor([[LN3, 0.0]])  # CE(label 0) = -ln(3/4)
        out[f"sel{i}"] = torch.tensor([[[0.0, 0.0]]])  # CE = ln 2
        out[f"drop{i}"] = torch.tensor([[[0.0, 0.0]]])  # (tanh 0 + 1)^2 = 1
    out["comb"] = torch.tensor([[0.0, LN3]])  # CE(label 0) = -ln(1/4)
    return out


KL = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)


def test_total_loss_official_weights(tiny_herbs):
    h = tiny_herbs.cfg.herbs
    h.lambda_s = 0.0
    total, terms = tiny_herbs.loss(_outputs(), torch.tensor([0]), epoch=0)
    expected = {"refine": 4 * KL / 2, "layer": 4 * -math.log(0.75), "drop": 4 * 1.0, "comb": math.log(4)}
    assert set(terms) == set(expected)  # lambda_s = 0: the selected term is not computed
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5)
    weighted = 1.375 * expected["refine"] + 0.3 * expected["layer"] + 5 * expected["drop"] + expected["comb"]
    assert total.item() == pytest.approx(weighted, rel=1e-5)


def test_total_loss_switches_and_options(tiny_herbs):
    h = tiny_herbs.cfg.herbs
    saved = (h.lambda_r, h.lambda_s, h.lambda_d, h.layer_agg, h.kl_reduction)
    try:
        h.lambda_r, h.lambda_s, h.lambda_d, h.layer_agg = 1.0, 0.5, 0.0, "mean"
        total, terms = tiny_herbs.loss(_outputs(), torch.tensor([0]), epoch=0)
        assert "drop" not in terms and terms["select"].item() == pytest.approx(4 * math.log(2), rel=1e-5)
        assert terms["layer"].item() == pytest.approx(-math.log(0.75), rel=1e-5)  # mean over the 4 stages
        expected = 1.0 * 4 * KL / 2 + 0.3 * -math.log(0.75) + 0.5 * 4 * math.log(2) + math.log(4)
        assert total.item() == pytest.approx(expected, rel=1e-5)
        # epoch 10 halves T: tok_bu / 32 = [2 ln3, 0] -> q = [9/10, 1/10]
        h.kl_reduction = "token"
        _, terms = tiny_herbs.loss(_outputs(), torch.tensor([0]), epoch=10)
        kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
        assert terms["refine"].item() == pytest.approx(4 * kl, rel=1e-5)
    finally:
        h.lambda_r, h.lambda_s, h.lambda_d, h.layer_agg, h.kl_reduction = saved


def test_fuse_mean_of_softmaxes_and_logit_sum(tiny_herbs):
    out = {name: torch.zeros(1, 2) for name in HEADS}
    out["comb"] = torch.tensor([[LN3, 0.0]])  # softmax [3/4, 1/4]; the 8 others [1/2, 1/2]
    fused = tiny_herbs.fuse(out)
    expected = [(8 * 0.5 + 0.75) / 9, (8 * 0.5 + 0.25) / 9]
    assert fused.exp()[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.softmax(fused, -1)[0].tolist() == pytest.approx(expected, rel=1e-6)  # log(p) is a valid logit
    tiny_herbs.cfg.herbs.fusion = "logit_sum"
    try:
        assert tiny_herbs.fuse(out)[0].tolist() == pytest.approx([LN3, 0.0], rel=1e-6)
    finally:
        tiny_herbs.cfg.herbs.fusion = "prob_mean"
