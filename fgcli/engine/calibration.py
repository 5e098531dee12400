"""Probability calibration: temperature scaling and the standard reliability measures.

Temperature scaling (Guo et al., 2017) divides the fused logits by one scalar T > 0 fitted to minimise the
negative log-likelihood on the validation split; the argmax never changes. For a fusion that averages
probabilities (HERBS' mean of softmaxes), the "logits" are the log of the fused probabilities, so the
calibrated prediction is softmax(log p / T), i.e. p^(1/T) renormalised.

Measures, all on the top-1 prediction: expected calibration error (ECE, 15 equal-width confidence bins,
weighted by bin size), maximum calibration error (MCE, the largest bin gap), NLL, the multi-class Brier
score (mean over images of sum_c (p_c - y_c)^2), and selective prediction (accuracy and coverage when only
predictions above a confidence threshold are kept).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BINS = 15
THRESHOLDS = (0.5, 0.8, 0.9)
LOG_T_BOUNDS = (-6.0, 6.0)  # T in [0.0025, 403]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, targets: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(targets)), targets]))


def fit_temperature(logits: Any, targets: Any) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (a 1-d bounded search over log T, in float64)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need N x C logits and N targets, got {z.shape} and {y.shape}")
    z = np.where(np.isfinite(z), z, -1e4)  # log(0) of a probability fusion: far below, still finite / T
    result = minimize_scalar(lambda log_t: _nll(z / math.exp(log_t), y), bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-5})
    return float(math.exp(result.x))


@dataclass
class Reliability:
    """Calibration measures of one set of probabilities (percentages are not used: all in [0, 1])."""

    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float
    mean_confidence: float
    bins: list[dict[str, float]] = field(default_factory=list)  # lo, hi, count, accuracy, confidence
    selective: list[dict[str, float]] = field(default_factory=list)  # threshold, coverage, accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability(probs: Any, targets: Any, bins: int = BINS,
                thresholds: tuple[float, ...] = THRESHOLDS) -> Reliability:
    """ECE / MCE over `bins` equal-width confidence bins, NLL, Brier and selective accuracy of N x C probs."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    n = len(y)
    if p.ndim != 2 or len(p) != n or n == 0:
        raise ValueError(f"need N x C probabilities and N targets, got {p.shape} and {y.shape}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin b holds confidences in (edges[b], edges[b + 1]]; a confidence of exactly 0 goes to the first bin
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        acc = float(correct[inside].mean()) if count else 0.0
        conf = float(confidence[inside].mean()) if count else 0.0
        if count:
            gap = abs(acc - conf)
            ece += count / n * gap
            mce = max(mce, gap)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count, "accuracy": acc,
                     "confidence": conf})
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    nll = float(-np.mean(np.log(np.clip(p[np.arange(n), y], 1e-12, None))))
    brier = float(np.mean(((p - onehot) ** 2).sum(axis=1)))
    selective = []
    for t in thresholds:
        kept = confidence >= t
        selective.append({"threshold": float(t), "coverage": float(kept.mean()),
                          "accuracy": float(correct[kept].mean()) if kept.any() else float("nan")})
    return Reliability(ece=float(ece), mce=float(mce), nll=nll, brier=brier, accuracy=float(correct.mean()),
                       mean_confidence=float(confidence.mean()), bins=rows, selective=selective)


def calibrated_probs(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) as float64 numpy."""
    return _softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def plot_reliability(before: Reliability, path: str | Path, after: Reliability | None = None,
                     title: str = "") -> Path:
    """Reliability diagram: accuracy vs confidence per bin (bars), bin counts, the diagonal, ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("uncalibrated", before)] + ([("calibrated", after)] if after is not None else [])
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for col, (name, rel) in enumerate(panels):
        ax, hist = axes[0][col], axes[1][col]
        lo = np.array([b["lo"] for b in rel.bins])
        width = lo[1] - lo[0] if len(lo) > 1 else 1.0
        acc = np.array([b["accuracy"] for b in rel.bins])
        counts = np.array([b["count"] for b in rel.bins])
        ax.bar(lo, np.where(counts > 0, acc, 0.0), width=width, align="edge", edgecolor="black",
               color="#4C72B0", label="accuracy")
        conf = np.array([b["confidence"] for b in rel.bins])
        ax.bar(lo, np.where(counts > 0, conf - acc, 0.0), bottom=np.where(counts > 0, acc, 0.0), width=width,
               align="edge", color="#DD8452", alpha=0.5, edgecolor="#DD8452", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
               title=f"{name}: ECE {100 * rel.ece:.2f} %, MCE {100 * rel.mce:.1f} %")
        ax.legend(loc="upper left", fontsize=8)
        hist.bar(lo, counts, width=width, align="edge", edgecolor="black", color="#999999")
        hist.set(xlabel="confidence (top-1)", ylabel="images")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
