"""Probability calibration: temperature scaling and the standard reliability measures.

Temperature scaling (Guo et al., 2017) divides the fused logits by one scalar T > 0 fitted to minimise the
negative log-likelihood on the validation split; the argmax never changes. For a fusion that averages
probabilities (HERBS' mean of softmaxes), the "logits" are the log of the fused probabilities, so the
calibrated prediction is softmax(log p / T), i.e. p^(1/T) renormalised.

Measures, all on the top-1 prediction: expected calibration error (ECE, 15 equal-width confidence bins,
weighted by bin size), maximum calibration error (MCE, the largest bin gap), NLL, the multi-class Brier
score (mean over images of sum_c (p_c - y_c)^2), and selective prediction (accuracy and coverage when only
predictions above a confidence threshold are kept).

A temperature needs errors to be estimated: when every validation image is right, the NLL keeps falling as
T shrinks and the "fit" is wherever the search or float64 stops. So T is fitted only when the split holds
at least MIN_EVENTS misclassified images (and as many right ones): about 10 events per fitted parameter, the
usual minimum for a logistic model (Peduzzi et al., 1996); temperature scaling is a one-parameter one.
Below that, `choose_temperature` keeps T = 1 unless the raw mean confidence lies outside the 95 %
(Clopper-Pearson) interval of the split's accuracy; then T moves from 1 towards the NLL optimum only until
the mean confidence reaches the interval's nearest end (the NLL is convex in 1/T, so it never rises).
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
MIN_EVENTS = 10  # misclassified (and correctly classified) images needed to fit T
INTERVAL_LEVEL = 0.95
#: the share of validation images the stored rejection threshold keeps, unless asked otherwise
REJECT_RECALL = 0.95


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


def accuracy_interval(correct: int, total: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """The Clopper-Pearson (exact binomial) interval of an accuracy of `correct` / `total`."""
    from scipy.stats import beta

    tail = (1.0 - level) / 2
    lo = 0.0 if correct == 0 else float(beta.ppf(tail, correct, total - correct + 1))
    hi = 1.0 if correct == total else float(beta.ppf(1.0 - tail, correct + 1, total - correct))
    return lo, hi


def mean_confidence(logits: Any, temperature: float = 1.0) -> float:
    """The mean top-1 probability of softmax(logits / T)."""
    return float(calibrated_probs(logits, temperature).max(axis=1).mean())


@dataclass
class TemperatureChoice:
    """The temperature to use and how it was decided (see the module docstring)."""

    temperature: float
    fit: str  # fitted (the NLL minimum) | kept (T = 1) | bounded (moved only into the accuracy interval)
    errors: int
    num_images: int
    confidence: float  # raw mean top-1 confidence (T = 1)
    interval: tuple[float, float] | None = None  # of the accuracy; None when fitted


def choose_temperature(logits: Any, targets: Any, min_events: int = MIN_EVENTS) -> TemperatureChoice:
    """`fit_temperature` when the images hold at least `min_events` errors and as many right answers, else
    T = 1, or the T closest to 1 (towards the NLL optimum) whose mean confidence is within the accuracy's
    95 % interval."""
    from scipy.optimize import brentq

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need N x C logits and N targets, got {z.shape} and {y.shape}")
    z = np.where(np.isfinite(z), z, -1e4)
    n = len(y)
    correct = int((z.argmax(axis=1) == y).sum())
    errors = n - correct
    confidence = mean_confidence(z)
    if min(errors, correct) >= min_events:
        return TemperatureChoice(fit_temperature(z, y), "fitted", errors, n, confidence)
    lo, hi = accuracy_interval(correct, n)
    if lo <= confidence <= hi:
        return TemperatureChoice(1.0, "kept", errors, n, confidence, (lo, hi))
    target = lo if confidence < lo else hi
    bounds = LOG_T_BOUNDS

    def gap(log_t: float) -> float:  # decreasing in T: a softer softmax is less confident
        return mean_confidence(z, math.exp(log_t)) - target

    if gap(bounds[0]) <= 0:
        log_t = bounds[0]
    elif gap(bounds[1]) >= 0:
        log_t = bounds[1]
    else:
        log_t = brentq(gap, *bounds, xtol=1e-8)
    # never past the NLL optimum (none exists without errors, or without right answers)
    optimum = bounds[0] if errors == 0 else bounds[1] if correct == 0 else math.log(fit_temperature(z, y))
    log_t = min(max(log_t, min(0.0, optimum)), max(0.0, optimum))
    temperature = math.exp(log_t)
    return TemperatureChoice(temperature, "kept" if temperature == 1.0 else "bounded", errors, n, confidence,
                             (lo, hi))


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


# -- the fitted temperature in a checkpoint ----------------------------------------------------------------
#: the checkpoint key holding the fit (plain types only: the file must stay loadable with weights_only=True)
CHECKPOINT_KEY = "calibration"


def stored_calibration(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's calibration record (see `fit_record`), or None for a checkpoint without one."""
    record = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(record, dict) or not record.get("temperature"):
        return None
    return record


def stored_temperature(ckpt: dict[str, Any]) -> float | None:
    """The fitted temperature of a checkpoint, or None (trained before calibration existed, or no val split)."""
    record = stored_calibration(ckpt)
    return None if record is None else float(record["temperature"])


def fit_record(logits: Any, targets: Any, *, split: str, weights: str = "", source: str = "",
               reject_recall: float | None = REJECT_RECALL) -> dict[str, Any]:
    """Choose T on the fused logits of `split` (`choose_temperature`) and describe it: the checkpoint's
    `calibration` entry.

    Keys: temperature, fit (fitted / kept / bounded), errors (misclassified images), reason (why T was not
    fitted; "" when it was), accuracy_interval ([lo, hi] of the split's accuracy, when not fitted),
    mean_confidence_before, split, num_images, weights (ema / model), source (train / calibrate), nll_before,
    nll_after, ece_before, ece_after, top1 (fraction, the same before and after), date, and `reject` (the
    rejection threshold on the max probability, calibrated with the chosen T, that keeps `reject_recall` of
    these images: fgcli.engine.ood.fit_reject; absent when `reject_recall` is None).
    """
    import datetime as _dt

    from fgcli.engine.ood import fit_reject

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    choice = choose_temperature(z, y)
    calibrated = calibrated_probs(z, choice.temperature)
    before = reliability(calibrated_probs(z, 1.0), y)
    after = reliability(calibrated, y)
    record = {"temperature": float(choice.temperature), "fit": choice.fit, "errors": int(choice.errors),
              "reason": choice_reason(choice, str(split)),
              "accuracy_interval": list(choice.interval) if choice.interval is not None else None,
              "mean_confidence_before": choice.confidence,
              "split": str(split), "num_images": int(len(y)), "weights": str(weights), "source": str(source),
              "nll_before": before.nll, "nll_after": after.nll, "ece_before": before.ece, "ece_after": after.ece,
              "top1": before.accuracy,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if reject_recall is not None:
        record["reject"] = fit_reject(calibrated, reject_recall)
    return record


def stored_reject(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's rejection threshold (`reject` of its calibration record), or None when it has none."""
    record = stored_calibration(ckpt)
    reject = record.get("reject") if record is not None else None
    return reject if isinstance(reject, dict) and reject.get("threshold") is not None else None


def choice_reason(choice: TemperatureChoice, split: str) -> str:
    """Why T was not fitted, in one sentence ("" when it was)."""
    if choice.fit == "fitted" or choice.interval is None:
        return ""
    n, errors = choice.num_images, choice.errors
    few = (f"{errors} of the {n} {split} images misclassified" if errors <= n - errors
           else f"only {n - errors} of the {n} {split} images right")
    lo, hi = choice.interval
    conf = 100 * choice.confidence
    side = "within" if lo <= choice.confidence <= hi else "below" if choice.confidence < lo else "above"
    what = "kept at 1" if choice.fit == "kept" else f"{choice.temperature:.3f} instead of a fit"
    text = (f"temperature {what}: {few}, too few (< {MIN_EVENTS}) to fit one, and the raw mean confidence "
            f"({conf:.1f}%) is {side} the 95% interval of the {split} accuracy ({100 * lo:.1f}-{100 * hi:.1f}%)")
    if choice.fit == "bounded":
        end = lo if side == "below" else hi
        text += f": {'sharpened' if side == 'below' else 'softened'} only to {100 * end:.1f}%"
    elif side != "within":
        text += ", but the NLL does not improve in that direction"
    return text + ". A larger val split allows a fit (fgcli calibrate --data)."


def record_line(record: dict[str, Any]) -> str:
    """One line: 'T 1.234 on 1020 val images: NLL 0.91 -> 0.62, ECE 12.3% -> 2.1%; rejection threshold 0.4100
    (keeps 95.0% of them, asked 95%)' (a T that was not fitted says so: 'T 1.000 (kept at 1: 0 errors) on ...')."""
    fit = record.get("fit", "fitted")
    how = "" if fit == "fitted" else \
        f" ({'kept at 1' if fit == 'kept' else 'bounded'}: {record.get('errors', '?')} errors)"
    line = (f"T {record['temperature']:.3f}{how} on {record['num_images']} {record['split']} images: NLL "
            f"{record['nll_before']:.4f} -> {record['nll_after']:.4f}, ECE {100 * record['ece_before']:.2f}% -> "
            f"{100 * record['ece_after']:.2f}%")
    reject = record.get("reject")
    if isinstance(reject, dict):
        line += (f"; rejection threshold {reject['threshold']:.4f} (keeps {100 * reject['val_recall']:.1f}% of "
                 f"them, asked {100 * reject['recall']:g}%)")
    return line


# -- the scores of an evaluation pass, kept for calibration ----------------------------------------------
def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def average_views(view_probs: list[np.ndarray]) -> np.ndarray:
    """Test-time augmentation: the mean of the views' probabilities (after calibration, if any)."""
    return np.mean(np.stack([np.asarray(p, dtype=np.float64) for p in view_probs]), axis=0)


class ScoreBook:
    """Per image of one pass: the raw fused logits of every view (1, or 2 with flip TTA), the calibrated
    probabilities when the model computed them itself (an exported graph), and the target."""

    def __init__(self) -> None:
        self._logits: list[list[np.ndarray]] = []  # per view, one chunk per batch
        self._probs: list[list[np.ndarray]] | None = None
        self._targets: list[np.ndarray] = []
        self._extra: dict[str, list[np.ndarray]] = {}  # per-image values of the plain view (head agreement, ...)

    def add(self, logits: list[Any], targets: Any, probs: list[Any] | None = None,
            extra: dict[str, Any] | None = None) -> None:
        """One batch: `logits` (and `probs`) hold one B x C array per view; `extra` one B-vector per name
        (every batch gives the same names)."""
        if not self._logits:
            self._logits = [[] for _ in logits]
            self._probs = [[] for _ in logits] if probs is not None else None
            self._extra = {name: [] for name in extra or {}}
        for chunks, view in zip(self._logits, logits, strict=True):
            chunks.append(_np(view).astype(np.float32))
        if self._probs is not None and probs is not None:
            for chunks, view in zip(self._probs, probs, strict=True):
                chunks.append(_np(view).astype(np.float32))
        for name, chunks in self._extra.items():
            chunks.append(_np((extra or {})[name]).astype(np.float64).reshape(-1))
        self._targets.append(_np(targets).astype(np.int64).reshape(-1))

    @property
    def views(self) -> int:
        return len(self._logits)

    def __len__(self) -> int:
        return int(sum(len(t) for t in self._targets))

    def state(self) -> dict[str, Any]:
        """Plain arrays (to gather from several processes and `extend` one book with the others)."""
        return {"logits": [np.concatenate(c) for c in self._logits] if len(self) else [],
                "probs": [np.concatenate(c) for c in self._probs] if self._probs is not None and len(self) else None,
                "targets": np.concatenate(self._targets) if self._targets else np.zeros(0, dtype=np.int64),
                "extra": {name: np.concatenate(c) for name, c in self._extra.items()} if len(self) else {}}

    def extend(self, state: dict[str, Any]) -> None:
        """Add another book's `state()`."""
        if len(state["targets"]):
            self.add(state["logits"], state["targets"], state["probs"], state.get("extra") or None)

    def arrays(self) -> tuple[list[np.ndarray], list[np.ndarray] | None, np.ndarray]:
        """(raw logits per view, calibrated probabilities per view or None, targets)."""
        s = self.state()
        return s["logits"], s["probs"], s["targets"]

    def extras(self) -> dict[str, np.ndarray]:
        """The per-image values added with `extra` (e.g. fgcli.engine.ood.head_scores), by name."""
        return self.state()["extra"]


def _summary(rel: Reliability) -> dict[str, float]:
    return {"top1": 100.0 * rel.accuracy, "ece": rel.ece, "mce": rel.mce, "nll": rel.nll, "brier": rel.brier,
            "mean_confidence": rel.mean_confidence}


@dataclass
class CalibrationReport:
    """Reliability of the fused prediction before / after calibration, and with test-time augmentation."""

    temperature: float | None  # None: the model has no fitted temperature (after == before)
    before: Reliability
    after: Reliability
    tta: str | None = None
    tta_before: Reliability | None = None
    tta_after: Reliability | None = None
    calibrated: bool = True  # whether the shown probabilities (selective line) are the calibrated ones
    fit: dict[str, Any] | None = None  # the model's calibration record (see `fit_record`), when it has one

    @property
    def shown(self) -> Reliability:
        """The probabilities users get (calibrated unless --no-calibration; with TTA when asked)."""
        if self.tta_after is not None and self.tta_before is not None:
            return self.tta_after if self.calibrated else self.tta_before
        return self.after if self.calibrated else self.before

    def to_dict(self) -> dict[str, Any]:
        """The `calibration` section of metrics.json (top-1 in percent, the rest in [0, 1])."""
        out: dict[str, Any] = {"temperature": self.temperature, "bins": BINS,
                               "uncalibrated": _summary(self.before), "calibrated": _summary(self.after),
                               "selective": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                              for k, v in row.items()} for row in self.shown.selective],
                               "selective_probabilities": ("calibrated" if self.calibrated else "uncalibrated")
                               + (f", {self.tta} TTA" if self.tta_after is not None else ""),
                               "fit": fit_summary(self.fit)}
        if self.tta_after is not None and self.tta_before is not None:
            out["tta"] = {"mode": self.tta, "uncalibrated": _summary(self.tta_before),
                          "calibrated": _summary(self.tta_after),
                          "top1_change": 100.0 * (self.tta_after.accuracy - self.after.accuracy)}
        return out

    def selective_line(self) -> str:
        """'confidence >= 0.5: 97.1% accurate on 80.0% of images | ...'."""
        parts = []
        for row in self.shown.selective:
            acc = "n/a" if not np.isfinite(row["accuracy"]) else f"{100 * row['accuracy']:.1f}%"
            parts.append(f">= {row['threshold']:g}: {acc} accurate, {100 * row['coverage']:.1f}% kept")
        return "selective prediction (keep confidence " + " | ".join(parts) + ")"


def fit_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a record's temperature was decided (metrics.json `calibration.fit`); None without a record."""
    if not record:
        return None
    return {"fit": record.get("fit", "fitted"), "reason": record.get("reason", ""), "errors": record.get("errors"),
            "split": record.get("split"), "num_images": record.get("num_images")}


def calibration_report(book: ScoreBook, temperature: float | None, *, tta: str | None = None,
                       calibrated: bool = True, fit: dict[str, Any] | None = None) -> CalibrationReport:
    """Reliability of the book's fused prediction: raw, calibrated with `temperature` (the model's own
    probabilities when it gave them), and the flip-TTA average of each when the book holds two views. `fit`:
    the model's calibration record, reported with the numbers."""
    logits, probs, targets = book.arrays()
    if not len(targets):
        raise ValueError("no images were scored")
    t = temperature or 1.0
    raw = [calibrated_probs(z, 1.0) for z in logits]
    cal = [np.asarray(p, dtype=np.float64) for p in probs] if probs is not None else \
        [calibrated_probs(z, t) for z in logits]
    report = CalibrationReport(temperature, reliability(raw[0], targets), reliability(cal[0], targets),
                               calibrated=calibrated, fit=fit)
    if len(raw) > 1:
        report.tta = tta or "flip"
        report.tta_before = reliability(average_views(raw), targets)
        report.tta_after = reliability(average_views(cal), targets)
    return report
