"""Plots of a run: results.png (curves from results.csv) and confusion_matrix.png (readable up to 200+ classes)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from fgcli.io import atomic_write_bytes

_CELL_TEXT_MAX = 30  # more classes than this: no numbers in the cells
_TICKS_MAX = 40  # more classes than this: label every n-th class only


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_confusion_matrix(confusion: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (true rows, predicted columns).

    Up to 30 classes each cell shows its percentage; beyond, colour only. Beyond 40 classes the tick labels
    are subsampled so they stay legible (200 classes: every 5th).
    """
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    n = cm.shape[0]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = float(np.clip(0.28 * n + 3, 6, 22))
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=100 if n <= 60 else 130)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    step = max(1, int(np.ceil(n / _TICKS_MAX)))
    ticks = np.arange(0, n, step)
    labels = [_short(classes[i]) if i < len(classes) else str(i) for i in ticks]
    font = 9 if n <= 20 else 7 if n <= _TICKS_MAX else 6
    ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    if n <= _CELL_TEXT_MAX:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted" + (f" (every {step}th class labelled)" if step > 1 else ""))
    ax.set_ylabel("true")
    acc = 100.0 * np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title + ' - ' if title else ''}confusion matrix, top-1 {acc:.2f}% on {int(cm.sum())} images")
    _save(fig, path)
    plt.close(fig)


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_results(rows: list[dict[str, float | str]], path: str | Path) -> None:
    """Curves from results.csv rows against epoch: every train/* loss term, the val top-1 of the fused
    prediction (bold) and of every head (thin), the fused top-5 (dashed), and lr. Legends sit below the
    panels, so that many heads never cover the curves or the titles."""
    plt = _pyplot()
    if not rows:
        return
    epochs = [float(r["epoch"]) for r in rows]
    keys = list(rows[0].keys())
    losses = [k for k in keys if k.startswith("train/") and k != "train/skipped"]
    heads = [k for k in keys if k.startswith("val/") and k.endswith("/top1") and k.count("/") == 2]
    accs = [k for k in ("val/top1", "val/top5") if k in keys] + heads
    panels = [("loss", losses), ("val accuracy (%)", accs), ("lr", ["lr"])]
    panels = [(t, ks) for t, ks in panels if ks]
    most = max(len(ks) for _, ks in panels)
    rows_of_legend = math.ceil(most / 3) if most > 1 else 0
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8 + 0.22 * rows_of_legend), dpi=100,
                             squeeze=False)
    for ax, (title, ks) in zip(axes[0], panels, strict=True):
        for k in ks:
            ys = [_num(r.get(k)) for r in rows]
            style = {"linewidth": 2.4, "marker": "o", "markersize": 4} if k == "val/top1" else (
                {"linewidth": 1.6, "linestyle": "--"} if k == "val/top5" else {"linewidth": 1.0, "marker": "o",
                                                                               "markersize": 2})
            label = {"val/top1": "fused top-1", "val/top5": "fused top-5"}.get(k, k[4:-5] if k in heads else k)
            ax.plot(epochs, ys, label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(ks) > 1:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_probe(path_fits: list, chosen_l2: float, path: str | Path) -> None:
    """A probe's results.png: train and val top-1 (and val NLL) against the L2 weight, the chosen one marked."""
    plt = _pyplot()
    fits = sorted(path_fits, key=lambda f: f.l2)
    l2 = [f.l2 for f in fits]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    left.plot(l2, [f.train_top1 for f in fits], marker="o", markersize=3, linewidth=1.0, label="train top-1")
    if all(f.val_top1 is not None for f in fits):
        left.plot(l2, [f.val_top1 for f in fits], marker="o", markersize=4, linewidth=2.4, label="val top-1")
        right.plot(l2, [f.val_nll for f in fits], marker="o", markersize=3, linewidth=1.6, label="val NLL")
    right.plot(l2, [f.objective for f in fits], marker="o", markersize=2, linewidth=1.0, label="train objective")
    for ax, title in ((left, "top-1 (%)"), (right, "loss")):
        ax.set_xscale("log")
        ax.axvline(chosen_l2, color="gray", linestyle="--", linewidth=1.0)
        ax.set_title(f"{title}, chosen L2 {chosen_l2:.3g}")
        ax.set_xlabel("L2 weight")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
