"""Temperature scaling and reliability measures against known temperatures and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fgcli.engine.calibration import calibrated_probs, fit_temperature, plot_reliability, reliability


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fitted_temperature_recovers_the_true_one(true_t: float) -> None:
    """Labels drawn from softmax(z / T): fitting on z finds T within a few percent."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 4.0, size=(20000, 10))
    p = calibrated_probs(z, true_t)
    y = (p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1)
    assert abs(fit_temperature(z, y) / true_t - 1.0) < 0.05


def test_temperature_of_a_probability_fusion_works_on_log_probabilities() -> None:
    """HERBS-like fusion: mean of softmaxes; calibrate log p (zeros give -inf, which must not break the fit)."""
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 3.0, size=(4000, 5))
    y = z.argmax(1)
    flat = np.log(0.5 * calibrated_probs(z, 8.0) + 0.5 / 5)  # under-confident but right
    flat[0, 1] = -np.inf
    t = fit_temperature(flat, y)
    assert t < 1.0  # sharpened
    assert reliability(calibrated_probs(flat, t), y).nll < reliability(np.exp(flat), y).nll


def test_calibration_never_changes_the_argmax() -> None:
    z = np.random.default_rng(2).normal(size=(500, 7)) * 5
    for t in (0.1, 0.7, 1.0, 4.0, 300.0):
        assert np.array_equal(calibrated_probs(z, t).argmax(1), z.argmax(1))


def test_reliability_measures_by_hand() -> None:
    """4 images, 2 classes, 2 bins ((0, .5], (.5, 1]):
    confidences .9 (right), .8 (wrong), .6 (right), .5 (right, the tie goes to class 0).
    bin 2: .9 .8 .6 -> accuracy 2/3, confidence .7667, gap .1; bin 1: .5 -> accuracy 1, gap .5.
    ECE = 3/4 * .1 + 1/4 * .5 = .2; MCE = .5.
    NLL = -(ln .9 + ln .2 + ln .6 + ln .5) / 4; Brier = (2*.01 + 2*.64 + 2*.16 + 2*.25) / 4 = .53."""
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0])
    rel = reliability(p, y, bins=2, thresholds=(0.5, 0.7))
    assert rel.ece == pytest.approx(0.2)
    assert rel.mce == pytest.approx(0.5)
    assert rel.nll == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.6) + math.log(0.5)) / 4)
    assert rel.brier == pytest.approx(0.53)
    assert rel.accuracy == pytest.approx(0.75)
    assert [b["count"] for b in rel.bins] == [1, 3]
    assert rel.bins[1]["accuracy"] == pytest.approx(2 / 3) and rel.bins[1]["confidence"] == pytest.approx(2.3 / 3)
    assert rel.selective == [{"threshold": 0.5, "coverage": 1.0, "accuracy": 0.75},
                             {"threshold": 0.7, "coverage": 0.5, "accuracy": 0.5}]


def test_ece_uses_fifteen_bins_by_default_and_is_zero_when_calibrated() -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 50000)
    right = rng.random(50000) < conf  # correct exactly as often as confident
    p = np.stack([conf, 1 - conf], 1)
    y = np.where(right, 0, 1)
    rel = reliability(p, y)
    assert len(rel.bins) == 15 and rel.ece < 0.01


def test_bad_shapes_are_errors() -> None:
    with pytest.raises(ValueError, match="N x C"):
        fit_temperature(np.zeros(3), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="N x C"):
        reliability(np.zeros((3, 2)), np.zeros(2, dtype=int))


def test_reliability_diagram_is_written(tmp_path) -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 3.0, size=(300, 4))
    y = z.argmax(1)
    before, after = reliability(calibrated_probs(z, 3.0), y), reliability(calibrated_probs(z, 1.0), y)
    path = plot_reliability(before, tmp_path / "reliability.png", after, title="test")
    assert path.stat().st_size > 10_000
