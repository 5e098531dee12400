"""fgcli.parity: images at a discrete decision of the model (HERBS' top-k selection, MGE-CNN's box threshold)
are set aside from fp32's |Δprob| only where the reference itself moves under rounding-level input noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fgcli.parity import NOISE_STD, compare, failure, unstable_rows


def _decision(x: np.ndarray, prefer_second: bool = False) -> np.ndarray:
    """Two-class probabilities of a model with one discrete choice per image: the logit is the first pixel when
    it is the larger (ties: the first, like a top-k), else the second plus 1, so the output jumps at a tie."""
    a, b = x[:, 0, 0, 0].astype(np.float64), x[:, 0, 0, 1].astype(np.float64)
    first = a > b if prefer_second else a >= b
    logit = np.where(first, a, b + 1.0)
    p = 1.0 / (1.0 + np.exp(-logit))
    return np.stack([p, 1.0 - p], 1)


IMAGES = np.array([[[[0.5, 0.5]]], [[[0.9, 0.1]]], [[[0.2, 0.7]]]], dtype=np.float32)  # image 0: a tie


def test_a_tie_tipped_the_other_way_is_set_aside_and_named():
    """A candidate that breaks image 0's tie the other way (as a different order of fp32 sums may): the reference
    itself flips there under 1e-6 noise, so the file passes fp32 and the line says what was set aside."""
    parity = compare(_decision, lambda x: _decision(x, prefer_second=True), IMAGES, "test images", batch_size=2)
    jump = 1 / (1 + math.exp(-1.5)) - 1 / (1 + math.exp(-0.5))  # sigmoid(0.5 + 1) - sigmoid(0.5)
    assert parity.unstable == 1 and parity.unstable_dprob == pytest.approx(jump)
    assert parity.max_abs_dprob == 0.0 and failure(parity, "fp32") is None
    assert "1 image at a discrete decision of the model left out of |Δprob|: up to 1.95e-01" in parity.line()
    assert f"under {NOISE_STD:g} input noise" in parity.line()


def test_a_real_error_on_a_stable_image_still_fails():
    """Image 1 is far from its decision: a 0.01 error there is the file's, and fp32 fails on it."""
    def wrong(x: np.ndarray) -> np.ndarray:
        probs = _decision(x, prefer_second=True)
        probs[np.isclose(x[:, 0, 0, 0], 0.9)] += [0.01, -0.01]
        return probs

    parity = compare(_decision, wrong, IMAGES, "test images", batch_size=3)
    assert parity.unstable == 1 and parity.max_abs_dprob == pytest.approx(0.01)
    assert "max |Δprob| 1.00e-02 > 0.0001" in failure(parity, "fp32")


def test_reduced_precisions_are_not_probed_and_stable_images_never_flagged():
    """`exact=False` (an fp16 / int8 file, judged by agreement): nothing is set aside; and an image whose gap is
    not matched by the reference's own movement is never flagged, whatever its size."""
    parity = compare(_decision, lambda x: _decision(x, prefer_second=True), IMAGES, "t", exact=False)
    assert parity.unstable == 0 and parity.max_abs_dprob == pytest.approx(0.1951, abs=1e-4)
    ref = _decision(IMAGES)
    shifted = ref + np.array([[0.0, 0.0], [0.2, -0.2], [0.0, 0.0]])
    assert unstable_rows(_decision, IMAGES, ref, shifted).tolist() == [False, False, False]
    assert unstable_rows(_decision, IMAGES, ref, ref).tolist() == [False, False, False]  # no gap: no probe
