"""Temperature scaling and reliability measures against known temperatures and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fgcli.engine.calibration import (
    MIN_EVENTS,
    accuracy_interval,
    calibrated_probs,
    choose_temperature,
    fit_record,
    fit_temperature,
    plot_reliability,
    record_line,
    reliability,
)


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


# -- too few errors to fit a temperature ---------------------------------------------------------------------
Y100 = np.arange(100) % 5  # 100 images, 5 classes
LO100 = 0.025 ** (1 / 100)  # Clopper-Pearson 95 % lower end for 100 / 100 right: 0.025^(1/n)


def test_accuracy_interval_by_hand() -> None:
    assert accuracy_interval(100, 100) == (pytest.approx(LO100), 1.0)
    assert accuracy_interval(0, 20) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20)))
    lo, hi = accuracy_interval(95, 100)  # the exact binomial tails: P(X >= 95 | lo) = P(X <= 95 | hi) = 2.5 %
    from scipy.stats import binom

    assert binom.sf(94, 100, lo) == pytest.approx(0.025) and binom.cdf(95, 100, hi) == pytest.approx(0.025)


def test_all_right_and_confident_keeps_t_at_one() -> None:
    """Every image right: the plain fit runs off to a tiny T (the NLL falls as T shrinks until float64 gives
    0); the chosen temperature is 1, said in the record."""
    z = 10.0 * np.eye(5)[Y100]  # confidence e^10 / (e^10 + 4) = 0.99982, inside [0.9638, 1]
    assert fit_temperature(z, Y100) < 0.1  # the artefact
    record = fit_record(z, Y100, split="val")
    assert record["temperature"] == 1.0 and record["fit"] == "kept" and record["errors"] == 0
    assert record["accuracy_interval"] == [pytest.approx(LO100), 1.0]
    assert record["nll_after"] == record["nll_before"]
    assert "kept at 1: 0 of the 100 val images misclassified" in record["reason"]
    assert "(kept at 1: 0 errors)" in record_line(record)


def test_all_right_but_under_confident_is_sharpened_only_into_the_interval() -> None:
    """Flat but right (HERBS' fused softmax): T such that the mean confidence reaches the interval's lower end,
    e^(0.5/T) / (e^(0.5/T) + 4) = lo, i.e. T = 0.5 / ln(4 lo / (1 - lo)) = 0.1071."""
    z = 0.5 * np.eye(5)[Y100]
    choice = choose_temperature(z, Y100)
    assert choice.fit == "bounded" and choice.temperature == pytest.approx(0.5 / math.log(4 * LO100 / (1 - LO100)))
    assert calibrated_probs(z, choice.temperature).max(1).mean() == pytest.approx(LO100)
    record = fit_record(z, Y100, split="val")
    assert record["nll_after"] < record["nll_before"] and "sharpened only to 96.4%" in record["reason"]


def test_the_rejection_threshold_is_fitted_at_the_chosen_temperature() -> None:
    """The same flat, all-right logits: at the bounded T every top-1 probability is LO100, so the threshold keeping
    95 % is LO100 (ties kept: all 100 images); at the plain fit's T (< 0.01) it would be ~1."""
    z = 0.5 * np.eye(5)[Y100]
    assert calibrated_probs(z, fit_temperature(z, Y100)).max(1).min() > 0.999
    record = fit_record(z, Y100, split="val", reject_recall=0.95)
    assert record["fit"] == "bounded"
    assert record["reject"]["threshold"] == pytest.approx(LO100) and record["reject"]["val_recall"] == 1.0
    line = record_line(record)
    assert "(bounded: 0 errors)" in line and f"rejection threshold {LO100:.4f} (keeps 100.0% of them" in line


def test_few_errors_and_over_confident_is_softened_only_into_the_interval() -> None:
    """5 errors out of 100 at confidence ~1: soften to the upper end hi of the 95/100 interval,
    T = 20 / ln(4 hi / (1 - hi)); the plain fit would soften further, and the NLL falls."""
    pred = Y100.copy()
    pred[:5] = (Y100[:5] + 1) % 5
    z = 20.0 * np.eye(5)[pred]
    hi = accuracy_interval(95, 100)[1]
    choice = choose_temperature(z, Y100)
    assert choice.fit == "bounded" and choice.errors == 5
    assert choice.temperature == pytest.approx(20 / math.log(4 * hi / (1 - hi)))
    assert 1.0 < choice.temperature < fit_temperature(z, Y100)
    record = fit_record(z, Y100, split="val")
    assert record["nll_after"] < record["nll_before"] and "softened only to" in record["reason"]


def test_never_moves_against_the_nll() -> None:
    """Under-confident by the mean confidence but the NLL optimum is softer: T stays 1."""
    y = np.arange(40) % 4
    pred = y.copy()
    pred[:2] = (y[:2] + 1) % 4  # 2 errors
    margin = np.where(pred == y, 0.3, 6.0)  # right answers flat, the 2 errors very confident
    z = np.eye(4)[pred] * margin[:, None]
    assert calibrated_probs(z, 1.0).max(1).mean() < accuracy_interval(38, 40)[0]
    assert fit_temperature(z, y) > 1.0
    choice = choose_temperature(z, y)
    assert choice.fit == "kept" and choice.temperature == 1.0
    assert "does not improve in that direction" in fit_record(z, y, split="val")["reason"]


@pytest.mark.parametrize("true_t", [0.5, 3.0])
def test_enough_errors_fit_the_same_temperature_as_before(true_t: float) -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 4.0, size=(3000, 10))
    p = calibrated_probs(z, true_t)
    y = (p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1)
    assert (z.argmax(1) != y).sum() >= MIN_EVENTS
    record = fit_record(z, y, split="val")
    assert record["fit"] == "fitted" and record["reason"] == "" and record["accuracy_interval"] is None
    assert record["temperature"] == fit_temperature(z, y)
    assert record_line(record).startswith(f"T {record['temperature']:.3f} on 3000 val images: NLL")
