"""Telling in-distribution images from images of other classes: scores, AUROC / FPR at 95 % TPR, and the
rejection threshold (all numpy; no model here).

Every score is "higher = more like the training classes":
  - `msp`: the maximum calibrated softmax probability (Hendrycks & Gimpel, 2017);
  - `energy`: logsumexp(logits / T) (Liu et al., 2020; the negative free energy up to the factor T, which does not
    change the ranking). Left out where the fused "logits" are log-probabilities (HERBS' default fusion, which
    averages the heads' probabilities, or flip TTA inside an exported graph): their logsumexp is 0 for every image;
  - with several heads (HERBS, MGE-CNN; a checkpoint, not an exported file): `head_energy`, the mean of the
    heads' own logsumexp; `head_prob`, the mean probability the heads give to the fused top-1 class; `head_vote`,
    the share of heads whose own top-1 is that class.

AUROC counts ties as one half (the Mann-Whitney U statistic); FPR at 95 % TPR is the share of out-of-distribution
images scoring at or above the highest threshold that keeps at least 95 % of the in-distribution ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: the share of in-distribution images the FPR is measured at, and the default kept by the rejection threshold
TPR = 0.95
#: score name -> what it is, in words (metrics.json and the README say the same)
DESCRIPTIONS = {
    "msp": "max calibrated probability",
    "energy": "logsumexp(fused logits / T)",
    "head_energy": "mean over heads of logsumexp(head logits)",
    "head_prob": "mean probability the heads give to the fused top-1 class",
    "head_vote": "share of heads whose top-1 is the fused top-1 class",
}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = np.max(z, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return (top + np.log(np.sum(np.exp(z - top), axis=1, keepdims=True)))[:, 0]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# -- scores ---------------------------------------------------------------------------------------------------
def msp(probs: Any) -> np.ndarray:
    """The maximum probability of each row of N x C probabilities."""
    return _np(probs).max(axis=1)


def energy(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """logsumexp(logits / T) per row (higher = more in-distribution)."""
    z = _np(logits) / float(temperature)
    return _logsumexp(np.where(np.isfinite(z), z, -1e30))


def is_log_probability(logits: Any, tol: float = 1e-3) -> bool:
    """True when every row's logsumexp is 0: the "logits" are log-probabilities (a probability fusion), whose
    energy carries no information."""
    z = _np(logits)
    return bool(len(z)) and bool(np.all(np.abs(_logsumexp(np.where(np.isfinite(z), z, -1e30))) < tol))


def head_scores(fused: Any, heads: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per image, from the heads' B x C logits: `head_prob`, `head_vote` (see the module docstring) and
    `head_energy`. A head identical to the fused output (MGE-CNN's gate) is left out: it would agree with itself."""
    z = _np(fused)
    top = z.argmax(axis=1)
    rows = np.arange(len(z))
    others = [h for h in (_np(v) for v in heads.values()) if not np.array_equal(h, z)]
    if not others:
        return {}
    probs = np.stack([_softmax(h)[rows, top] for h in others])
    votes = np.stack([h.argmax(axis=1) == top for h in others]).astype(np.float64)
    energies = np.stack([_logsumexp(h) for h in others])
    return {"head_prob": probs.mean(0), "head_vote": votes.mean(0), "head_energy": energies.mean(0)}


# -- separation measures ----------------------------------------------------------------------------------------
def _check(inside: Any, outside: Any) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = _np(inside).reshape(-1), _np(outside).reshape(-1)
    if not len(pos) or not len(neg):
        raise ValueError(f"need in- and out-of-distribution scores, got {len(pos)} and {len(neg)}")
    return pos, neg


def auroc(inside: Any, outside: Any) -> float:
    """P(score of an in-distribution image > score of another image), ties counted one half."""
    pos, neg = _check(inside, outside)
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ordered = both[order]
    # average rank (1-based) of each run of equal values
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(both)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def threshold_at_recall(scores: Any, recall: float = TPR) -> float:
    """The highest threshold t with mean(scores >= t) >= `recall` (a score at t is kept)."""
    s = np.sort(_np(scores).reshape(-1))
    if not len(s):
        raise ValueError("no scores to choose a threshold on")
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    # keeping s[k:] keeps n - k images: the largest k with n - k >= recall * n (a hair of slack for rounding)
    k = int(np.floor(len(s) * (1.0 - recall) + 1e-9))
    return float(s[min(k, len(s) - 1)])


def fpr_at_tpr(inside: Any, outside: Any, tpr: float = TPR) -> float:
    """The share of out-of-distribution images kept by the threshold that keeps `tpr` of the in-distribution ones."""
    pos, neg = _check(inside, outside)
    return float(np.mean(neg >= threshold_at_recall(pos, tpr)))


# -- the report ------------------------------------------------------------------------------------------------
def separation(inside: Mapping[str, Any], outside: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{score: {auroc, fpr95, description}} for every score both sides have."""
    out = {}
    for name, values in inside.items():
        if name not in outside:
            continue
        out[name] = {"auroc": auroc(values, outside[name]), "fpr95": fpr_at_tpr(values, outside[name]),
                     "description": DESCRIPTIONS.get(name, name)}
    return out


def image_scores(logits: Any, probs: Any, extra: Mapping[str, Any] | None, temperature: float | None
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The scores of a set of images from their fused logits, calibrated probabilities and the heads' scores
    (`extra`, from `head_scores`), plus a note per score left out or replaced (why)."""
    scores = {"msp": msp(probs)}
    notes: dict[str, str] = {}
    extra = dict(extra or {})
    if is_log_probability(logits):
        notes["energy"] = ("left out: the fused output is the log of an averaged probability (its logsumexp is 0 "
                           "for every image)" + ("; see head_energy" if "head_energy" in extra else ""))
    else:
        scores["energy"] = energy(logits, temperature or 1.0)
    for name in ("head_energy", "head_prob", "head_vote"):
        if name in extra:
            scores[name] = _np(extra[name])
    return scores, notes


def rejection_rates(inside: Any, outside: Any | None, threshold: float) -> dict[str, float]:
    """What a stored threshold on the max probability does: the share of in-distribution images kept and of
    out-of-distribution images rejected."""
    out = {"threshold": float(threshold), "id_kept": float(np.mean(_np(inside) >= threshold))}
    if outside is not None:
        out["ood_rejected"] = float(np.mean(_np(outside) < threshold))
    return out


def fit_reject(probs: Any, recall: float) -> dict[str, Any]:
    """The rejection threshold on the max calibrated probability of validation images: the `reject` entry of a
    checkpoint's calibration record (score, threshold, recall asked, recall reached on those images)."""
    scores = msp(probs)
    threshold = threshold_at_recall(scores, recall)
    return {"score": "msp", "threshold": threshold, "recall": float(recall),
            "val_recall": float(np.mean(scores >= threshold))}
