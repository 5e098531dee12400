"""`fgcli calibrate`: fit (or refit) the temperature of a checkpoint's fused prediction and its rejection threshold
on the validation split and write them back into the checkpoint atomically. Training does the same at its end; this is for checkpoints
trained before calibration existed, or to calibrate on other validation data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgcli.console import log, progress_bar
from fgcli.errors import UserError
from fgcli.options import CalibrateOptions


@dataclass
class CalibrateResult:
    """The checkpoint written, the new fit and the one it replaced (None when it had none)."""

    checkpoint: Path
    written: Path
    record: dict[str, Any]
    previous: dict[str, Any] | None = None

    def table(self) -> Any:
        """Before / after: temperature, NLL, ECE (top-1 is unchanged by calibration)."""
        from rich.table import Table

        r = self.record
        table = Table(title=f"Calibration of {self.checkpoint} ({r['split']} split, {r['num_images']} images)")
        for name in ("", "temperature", "NLL", "ECE %", "top-1 %"):
            table.add_column(name, justify="left" if not name else "right")
        table.add_row("uncalibrated", "1.000", f"{r['nll_before']:.4f}", f"{100 * r['ece_before']:.2f}",
                      f"{100 * r['top1']:.2f}")
        how = {"kept": " (kept at 1)", "bounded": " (not fitted)"}.get(r.get("fit", ""), "")
        table.add_row(f"[bold]calibrated[/]{how}", f"[bold]{r['temperature']:.3f}[/]", f"{r['nll_after']:.4f}",
                      f"{100 * r['ece_after']:.2f}", f"{100 * r['top1']:.2f}")
        caption = []
        reject = r.get("reject")
        if isinstance(reject, dict):
            caption.append(f"rejection threshold {reject['threshold']:.4f} on the calibrated top-1 probability: keeps "
                           f"{100 * reject['val_recall']:.1f}% of these images (asked {100 * reject['recall']:g}%); "
                           "`fgcli predict --reject` answers unknown below it")
        if self.previous is not None:
            caption.append(f"replaces temperature {float(self.previous['temperature']):.3f} "
                           f"(from {self.previous.get('split', '?')}, {self.previous.get('date', '')})")
        table.caption = "\n".join(caption) or None
        return table


def resolve_checkpoint(target: str | Path) -> Path:
    """A .pt file as given, or a run folder's weights/best.pt."""
    path = Path(target)
    if path.is_dir():
        best = path / "weights" / "best.pt"
        if not best.is_file():
            raise UserError(f"run folder {path} has no weights/best.pt. Give a checkpoint file (e.g. "
                            f"{path / 'weights' / 'last.pt'}).")
        return best
    from fgcli.formats import format_of

    fmt = format_of(path)
    if not fmt.heads:
        raise UserError(f"{path} is an {fmt.title} file; calibrate the .pt checkpoint it was exported from, then "
                        "export it again (the temperature becomes a constant of the graph).")
    return path


def check_split(split: str) -> None:
    """Only a held-out validation split may be fitted on."""
    if split == "test":
        raise UserError("--split test: the temperature is never fitted on the test split (its numbers would no "
                        "longer be honest); use --split val.")
    if split == "train":
        raise UserError("--split train: the model has fitted the training images, so its confidence there is "
                        "biased; use --split val.")


def check_recall(recall: float | None) -> None:
    """--reject-recall is a share of in-distribution images in (0, 1]."""
    if recall is not None and not 0.0 < recall <= 1.0:
        raise UserError(f"--reject-recall {recall} must be in (0, 1]: the share of in-distribution (val) images the "
                        "rejection threshold keeps, e.g. 0.95.")


def calibrate_checkpoint(target: str | Path, options: CalibrateOptions | None = None) -> CalibrateResult:
    """Fit the temperature of the checkpoint's fused prediction on `split` of `data` (default: the run's own
    data and the split it validated on) and the rejection threshold keeping `reject_recall` of those images
    (default: the share the checkpoint's threshold was fitted for, else the run's `train.reject_recall`), and
    store both in the checkpoint (or `out`), atomically: an error or a kill during the write leaves the old file
    intact."""
    from fgcli.data.select import resolve_split_data, run_data
    from fgcli.engine.calibration import CHECKPOINT_KEY, ScoreBook, fit_record, stored_calibration
    from fgcli.engine.checkpoint import load_model, save_checkpoint
    from fgcli.engine.evaluate import evaluate
    from fgcli.engine.signals import defer_sigint

    opts = options or CalibrateOptions()
    data, split, reject_recall = opts.data, opts.split, opts.reject_recall
    check_split(split)
    check_recall(reject_recall)
    path = resolve_checkpoint(target)
    loaded = load_model(path, device=opts.device, use_ema=opts.ema)
    if data is None:
        data = run_data(loaded.config, "--data PATH")
    chosen = resolve_split_data(loaded.config.data, data, split, loaded.classes, loaded.preprocess,
                                opts.batch_size, opts.workers)
    log.info(f"fitting the temperature of {path} on {len(chosen.samples)} {split} images of {data} "
             f"({loaded.weights} weights, {loaded.device})")
    book = ScoreBook()
    with progress_bar() as bar:
        task = bar.add_task(f"calibrate on {split}", total=len(chosen.samples))
        evaluate(loaded.model, chosen.loader, len(loaded.classes), device=loaded.device, scores=book,
                 progress=lambda n: bar.advance(task, n))
    logits, _, targets = book.arrays()
    if not len(targets):
        raise UserError(f"--split {split} of {data} gave no images to fit on.")
    ckpt = loaded.checkpoint
    previous = stored_calibration(ckpt)
    if reject_recall is None:
        before = (previous or {}).get("reject")
        reject_recall = float(before["recall"]) if isinstance(before, dict) and before.get("recall") else \
            float(loaded.config.train.reject_recall)
    record = fit_record(logits[0], targets, split=split, weights=loaded.weights, source="calibrate",
                        reject_recall=reject_recall)
    if record["reason"]:
        log.warning(record["reason"])
    ckpt[CHECKPOINT_KEY] = record
    written = Path(opts.out) if opts.out is not None else path
    with defer_sigint():
        save_checkpoint(written, ckpt)
    return CalibrateResult(path, written, record, previous)
