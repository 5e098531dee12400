"""Evaluation: a metric accumulator fed with (fused logits, per-head logits, targets) batches, a torch-model
loop that feeds it, and the report writer (metrics.json, per-class CSV, confusion matrix, rich table).

The accumulator knows nothing about models: `.onnx` evaluation feeds onnxruntime outputs (numpy) into the
same `MetricAccumulator` and `write_report`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgcli.io import atomic_write_text

FUSED = "fused"


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    return torch.as_tensor(np.asarray(x)).float()


class MetricAccumulator:
    """Counts exact top-1 / top-5 hits of the fused output and every head, plus the fused confusion matrix.

    All state is integer counts, so shards from several processes merge exactly by summation
    (`state_tensor` / `load_state_tensor`, or `merge`).
    """

    def __init__(self, num_classes: int, heads: Iterable[str] = (), topk: int = 5) -> None:
        self.num_classes = num_classes
        self.k = min(topk, num_classes)
        self.heads = list(heads)
        self.n = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [true, pred]
        self.topk_hits = {name: 0 for name in [FUSED, *self.heads]}
        self.top1_hits = {name: 0 for name in [FUSED, *self.heads]}

    def update(self, fused: Any, targets: Any, heads: Mapping[str, Any] | None = None) -> None:
        """Add one batch: fused B x C logits (or probabilities), targets B, optional {head: B x C}."""
        fused_t = _as_tensor(fused)
        tgt = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)).long()
        if fused_t.ndim != 2 or fused_t.shape[0] != tgt.shape[0] or fused_t.shape[1] != self.num_classes:
            raise ValueError(f"fused logits of shape {tuple(fused_t.shape)} do not match {tgt.shape[0]} targets "
                             f"and {self.num_classes} classes")
        self.n += int(tgt.shape[0])
        pred = fused_t.argmax(1)
        self.confusion += torch.bincount(tgt * self.num_classes + pred,
                                         minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)
        self._count(FUSED, fused_t, tgt)
        for name, logits in (heads or {}).items():
            if name not in self.topk_hits:
                self.heads.append(name)
                self.topk_hits[name] = 0
                self.top1_hits[name] = 0
            self._count(name, _as_tensor(logits), tgt)

    def _count(self, name: str, logits: torch.Tensor, tgt: torch.Tensor) -> None:
        top = logits.topk(self.k, dim=1).indices
        hits = top.eq(tgt[:, None])
        self.top1_hits[name] += int(hits[:, 0].sum())
        self.topk_hits[name] += int(hits.any(1).sum())

    # -- merging across processes ---------------------------------------------------------------------
    def state_tensor(self) -> torch.Tensor:
        """All counts as one int64 vector (for an all-reduce sum)."""
        names = [FUSED, *self.heads]
        counts = [self.n] + [self.top1_hits[k] for k in names] + [self.topk_hits[k] for k in names]
        return torch.cat([torch.tensor(counts, dtype=torch.int64), self.confusion.flatten()])

    def load_state_tensor(self, t: torch.Tensor) -> None:
        """Inverse of `state_tensor` (after the reduction)."""
        names = [FUSED, *self.heads]
        t = t.cpu().long()
        h = len(names)
        self.n = int(t[0])
        for i, k in enumerate(names):
            self.top1_hits[k] = int(t[1 + i])
            self.topk_hits[k] = int(t[1 + h + i])
        self.confusion = t[1 + 2 * h:].view(self.num_classes, self.num_classes).clone()

    def merge(self, other: MetricAccumulator) -> None:
        """Add another accumulator's counts (same classes and heads)."""
        self.load_state_tensor(self.state_tensor() + other.state_tensor())

    # -- results --------------------------------------------------------------------------------------
    def result(self) -> EvalResult:
        n = max(self.n, 1)
        per_class_n = self.confusion.sum(1)
        per_class_correct = self.confusion.diag()
        return EvalResult(
            num_samples=self.n,
            top1=100.0 * self.top1_hits[FUSED] / n,
            top5=100.0 * self.topk_hits[FUSED] / n,
            k=self.k,
            heads={name: {"top1": 100.0 * self.top1_hits[name] / n, f"top{self.k}": 100.0 * self.topk_hits[name] / n}
                   for name in self.heads},
            confusion=self.confusion.numpy().copy(),
            per_class_total=per_class_n.numpy().copy(),
            per_class_correct=per_class_correct.numpy().copy(),
        )


@dataclass
class EvalResult:
    """Accuracies in percent; `confusion[true, pred]` counts."""

    num_samples: int
    top1: float
    top5: float
    k: int = 5
    heads: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    per_class_total: np.ndarray | None = None
    per_class_correct: np.ndarray | None = None

    def per_class_accuracy(self) -> np.ndarray:
        total = np.maximum(self.per_class_total, 1)
        return 100.0 * self.per_class_correct / total


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: Iterable, device: torch.device, num_classes: int,
                   amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                   heads: list[str] | None = None, progress: Any = None, scores: Any = None,
                   tta: str | None = None) -> MetricAccumulator:
    """Run a Method over a loader of (images, targets[, ...]) and accumulate its metrics (this process only).

    `model` may be wrapped (DDP / compile); `fuse` / `heads` are taken from the unwrapped Method. Per-head
    metrics are kept only for methods with more than one head (a single head is the fused output). Pass
    `heads` (the names) so that every process of a distributed run builds the same accumulator. `scores`
    (a `calibration.ScoreBook`) also keeps every image's fused logits, of each view of `tta` ('flip' adds the
    mirrored image; the metrics counted here are those of the plain view), and with several heads their
    agreement with the fused prediction (`fgcli.engine.ood.head_scores`, plain view).
    """
    from fgcli.engine.checkpoint import unwrap_model
    from fgcli.engine.ood import head_scores

    method = unwrap_model(model)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes, heads=heads) if heads is not None else None
    try:
        for batch in loader:
            images, targets = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                outputs = model(images)
            fused = method.fuse(outputs).float()
            head_logits = {k: v.float() for k, v in method.heads(outputs).items()}
            if len(head_logits) < 2:
                head_logits = {}
            if scores is not None:
                scores.add([fused, *_other_views(model, method, images, tta, device, amp_dtype)], targets,
                           extra=head_scores(fused, head_logits) if head_logits else None)
            if acc is None:
                acc = MetricAccumulator(num_classes, heads=list(head_logits))
            acc.update(fused, targets, head_logits)
            if progress is not None:
                progress(int(images.shape[0]))
    finally:
        model.train(was_training)
    return acc if acc is not None else MetricAccumulator(num_classes, heads=heads or [])


def _other_views(model: Any, method: Any, images: torch.Tensor, tta: str | None, device: torch.device,
                 amp_dtype: torch.dtype | None) -> list[torch.Tensor]:
    """The fused logits of the test-time augmented views beyond the plain one."""
    from fgcli.engine.fused import tta_views

    out = []
    for view in tta_views(images, tta)[1:]:
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(view)
        out.append(method.fuse(outputs).float())
    return out


def evaluate(model: Any, loader: Iterable, num_classes: int, *, device: torch.device | None = None,
             progress: Any = None, scores: Any = None, tta: str | None = None,
             **torch_options: Any) -> MetricAccumulator:
    """The one evaluation: a loader of (images, targets[, ...]) through any model into a MetricAccumulator.

    `model` is a torch Method (fused and per-head scores; `device`, and `torch_options` such as `amp_dtype`,
    `channels_last`, `heads` go to `evaluate_model`) or any predictor: a callable mapping a float32 numpy
    batch N x 3 x H x W to (logits, probs), e.g. an onnxruntime fp32 / fp16 / int8 model (fused score only).
    `progress(n)` is called after each batch of n images. `scores` / `tta`: see `evaluate_model` (a predictor's
    own calibrated probabilities are kept too).
    """
    from fgcli.engine.fused import tta_views

    if isinstance(model, torch.nn.Module):
        return evaluate_model(model, loader, device or torch.device("cpu"), num_classes, progress=progress,
                              scores=scores, tta=tta, **torch_options)
    acc = MetricAccumulator(num_classes, heads=[])
    for batch in loader:
        images, targets = batch[0], batch[1]
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        logits, probs = model(array)
        acc.update(logits, targets)
        if scores is not None:
            views = [(logits, probs)] + [model(view) for view in tta_views(array, tta)[1:]]
            scores.add([v[0] for v in views], targets, probs=[v[1] for v in views])
        if progress is not None:
            progress(len(images))
    return acc


# -- the report ------------------------------------------------------------------------------------------
def per_class_csv(result: EvalResult, classes: list[str]) -> str:
    """CSV text: index,class,num_samples,correct,accuracy (percent)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "class", "num_samples", "correct", "accuracy"])
    acc = result.per_class_accuracy()
    for i, name in enumerate(classes):
        writer.writerow([i, name, int(result.per_class_total[i]), int(result.per_class_correct[i]),
                         f"{acc[i]:.4f}" if result.per_class_total[i] else ""])
    return buf.getvalue()


def metrics_dict(result: EvalResult, classes: list[str], extra: dict[str, Any] | None = None,
                 more: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready metrics (fused top-1/top-k, per head, mean per-class accuracy; `more` sections last)."""
    present = result.per_class_total > 0
    mean_class = float(result.per_class_accuracy()[present].mean()) if present.any() else 0.0
    return {
        **(extra or {}),
        "num_samples": result.num_samples,
        "num_classes": len(classes),
        "top1": round(result.top1, 4),
        f"top{result.k}": round(result.top5, 4),
        "mean_class_accuracy": round(mean_class, 4),
        "heads": {name: {k: round(v, 4) for k, v in m.items()} for name, m in result.heads.items()},
        **(more or {}),
    }


def write_report(result: EvalResult, classes: list[str], out_dir: str | Path,
                 extra: dict[str, Any] | None = None, title: str = "",
                 more: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write metrics.json, per_class_accuracy.csv and confusion_matrix.png into `out_dir`."""
    from fgcli.engine.plots import plot_confusion_matrix

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "per_class": out / "per_class_accuracy.csv",
             "confusion": out / "confusion_matrix.png"}
    atomic_write_text(paths["metrics"], json.dumps(metrics_dict(result, classes, extra, more), indent=2) + "\n")
    atomic_write_text(paths["per_class"], per_class_csv(result, classes))
    plot_confusion_matrix(result.confusion, classes, paths["confusion"], title=title)
    return paths


def results_table(result: EvalResult, title: str = "Evaluation") -> Any:
    """A rich table: fused first, then each head."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("output")
    table.add_column("top-1 %", justify="right")
    table.add_column(f"top-{result.k} %", justify="right")
    table.add_row("[bold]fused[/]", f"[bold]{result.top1:.2f}[/]", f"{result.top5:.2f}")
    for name, m in result.heads.items():
        table.add_row(name, f"{m['top1']:.2f}", f"{m[f'top{result.k}']:.2f}")
    table.caption = f"{result.num_samples} images"
    return table
