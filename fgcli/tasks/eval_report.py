"""`fgcli eval`: score any registered model file (fgcli.formats) on a data split, a checkpoint with its fused
output and every head, an exported file with its fused output, and write the report. Returns an `EvalRun`; printing it is the
command's job."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.console import log, progress_bar
from fgcli.engine.evaluate import EvalResult, evaluate, results_table, write_report
from fgcli.engine.rundir import default_out_dir
from fgcli.errors import UserError
from fgcli.inference import ExportedPredictor
from fgcli.options import EvalOptions


@dataclass
class EvalRun:
    """The result, where the report went, and what was evaluated."""

    result: EvalResult
    out_dir: Path
    files: dict[str, Path]
    title: str = ""
    device: str = ""
    calibration: Any = None  # fgcli.engine.calibration.CalibrationReport
    confusions: list[dict[str, Any]] = field(default_factory=list)  # fgcli.engine.confusions.confused_pairs
    ood: dict[str, Any] | None = None  # metrics.json's `ood` section (fgcli.tasks.ood_report.ood_section), with --ood

    def table(self) -> Any:
        """The rich table of the fused output and each head."""
        return results_table(self.result, title=self.title)

    def calibration_table(self) -> Any:
        """The rich table of the fused prediction's reliability before / after calibration (and with TTA)."""
        return calibration_table(self.calibration) if self.calibration is not None else None

    def confusions_table(self) -> Any:
        """The rich table of the most-confused class pairs."""
        from fgcli.engine.confusions import pairs_table

        return pairs_table(self.confusions)

    def ood_table(self) -> Any:
        """The rich table of the --ood separation scores (None without --ood)."""
        from fgcli.tasks.ood_report import ood_table

        return ood_table(self.ood) if self.ood is not None else None


def eval_model(path: str | Path, options: EvalOptions | None = None) -> EvalRun:
    """Evaluate any registered model file (fgcli.formats) on a data split and write metrics.json,
    per_class_accuracy.csv, confusion_matrix.png, reliability.png and confusions.html into `out` (default
    runs/eval/<run name>). A checkpoint gives the fused output and every head (and attention maps in
    confusions.html), an exported file its fused output.

    `confusions`: how many of the most-confused class pairs go into metrics.json (`confusions`), the printed
    report and confusions.html (0: none, no page). `ood`: a folder of images of other classes (or a prepared
    data set, its test split): how well each score separates the split from them (metrics.json `ood`,
    fgcli.tasks.ood_report).

    The fused prediction's calibration (ECE, MCE, NLL, Brier before / after the model's fitted temperature,
    selective accuracy / coverage) goes into metrics.json's `calibration` section; `tta` 'flip' adds the
    mirrored view and reports its effect there (top-1 and the rest stay those of the plain view).
    `calibration` False: the selective-prediction line uses the uncalibrated probabilities. `providers` /
    `precision`: as the file's format honours them (fgcli.formats.check_options). `threads`: the runtime's
    intra-op threads (None: its default).

    `data` None: the data set the run was trained on (a checkpoint records it; an exported file does not).
    Splits are carved with the run's own data settings (stored in the checkpoint, or in the exported file's
    metadata), so `--split val` is the split the run validated on.
    """
    from fgcli.config import from_dict
    from fgcli.data.select import resolve_split_data, run_data
    from fgcli.engine.calibration import ScoreBook, stored_calibration, stored_reject
    from fgcli.engine.fused import check_tta
    from fgcli.formats import load_predictor

    opts = options or EvalOptions()
    path, data, split = Path(path), opts.data, opts.split
    tta = check_tta(opts.tta)
    if opts.confusions < 0:
        raise UserError(f"--confusions {opts.confusions} must be >= 0 (0: no confused pairs, no confusions.html).")
    ood_images = None
    if opts.ood is not None:  # bad --ood input fails before the long pass over the split
        from fgcli.tasks.ood_report import find_images

        ood_images = find_images(opts.ood)
    # TTA and the uncalibrated scores are eval's own (every view and both probabilities are reported)
    predictor = load_predictor(path, dataclasses.replace(opts.load_options(), tta=None, calibration=True))
    info = predictor.info
    temperature = predictor.temperature
    if isinstance(predictor, ExportedPredictor):  # an exported file: its fused output feeds the same report
        model: Any = predictor
        name = predictor.format
        if data is None:
            raise UserError(f"{path} is an exported {name} model, which does not record its training data: pass "
                            "--data PATH (e.g. --data demo or the data set root).")
        where, torch_device = predictor.device, None
        if getattr(predictor, "mixed", False):
            log.info(f"{predictor.device}: {predictor.placement_line()}")
        reject = None if predictor.reject is None else {**predictor.reject, "split": "val"}
        fit = predictor.calibration_fit()
        if predictor.graph_tta is not None:
            if tta is not None:
                log.info(f"{path.name} was exported with --tta {predictor.graph_tta}: its outputs already average "
                         "the views")
            tta = None
        data_cfg = from_dict({"data": predictor.data_settings()}, source=f"{path} metadata").data
        extra = predictor.report_fields()
        title = f"{info.method} / {info.backbone} ({name}, {info.precision})"
        report_title = f"{info.method} ({name}) on {split}"
        log.info(f"evaluating {path.name} on {where}")
    else:  # the checkpoint: the torch model, fused output and every head
        loaded = predictor.loaded
        model, torch_device, data_cfg = loaded.model, loaded.device, loaded.config.data
        reject = stored_reject(loaded.checkpoint)
        if reject is not None:
            reject = {**reject, "split": loaded.checkpoint["calibration"].get("split", "val")}
        fit = stored_calibration(loaded.checkpoint)
        where = str(torch_device)
        if data is None:
            data = run_data(loaded.config, "--data PATH")
        extra = {"checkpoint": str(path), "epoch": loaded.checkpoint["epoch"], "weights": loaded.weights}
        title = f"{info.method} / {info.backbone}"
        report_title = f"{info.method} on {split}"
    if temperature is None:
        from fgcli.inference import calibration_note

        log.info(calibration_note(None, False))
    batch_size, workers = opts.batch_size, opts.workers
    chosen = resolve_split_data(data_cfg, data, split, info.classes, info.preprocess, batch_size, workers)
    t0 = time.perf_counter()
    book = ScoreBook()
    with progress_bar() as bar:
        task = bar.add_task(f"eval {split}" + (f" (+{tta} TTA)" if tta else ""), total=len(chosen.samples))
        acc = evaluate(model, chosen.loader, len(info.classes), device=torch_device,
                       progress=lambda n: bar.advance(task, n), scores=book, tta=tta)
    result = acc.result()
    if result.num_samples != len(chosen.samples):
        log.warning(f"evaluated {result.num_samples} images but the split has {len(chosen.samples)}")
    out_dir = Path(opts.out) if opts.out is not None else default_out_dir(path)
    extra = {**extra, "data": str(data), "split": split, "method": info.method, "backbone": info.backbone,
             "device": where, "seconds": round(time.perf_counter() - t0, 3)}
    report = _calibration(book, temperature, tta, opts.calibration, fit) if result.num_samples else None
    more: dict[str, Any] = {"calibration": report.to_dict()} if report is not None else {}
    pairs = _pairs(result, info.classes, opts.confusions)
    more["confusions"] = pairs
    section = None
    if ood_images is not None and result.num_samples:
        section = _ood(model, ood_images, book, info, temperature, reject, split, batch_size,
                       data_cfg.workers if workers is None else workers, torch_device)
        more["ood"] = section
    files = write_report(result, info.classes, out_dir, extra={**extra, "tta": tta or "none"}, title=report_title,
                         more=more)
    if report is not None:
        files["reliability"] = _plot_reliability(report, out_dir / "reliability.png", report_title)
    if opts.confusions and result.num_samples:
        files["confusions_html"] = _confusions_page(
            out_dir / "confusions.html", pairs, book, chosen, info, temperature,
            None if torch_device is None else model, torch_device, title=f"What {title} confuses",
            meta=[f"{path} on the {split} split of {data}: {result.num_samples} images, top-1 {result.top1:.2f}%",
                  "confidence: " + ("calibrated" if temperature else "uncalibrated (no fitted temperature)")
                  + " probability of the predicted class"])
    return EvalRun(result, out_dir, files, title=f"{title} on {data} [{split}]", device=where, calibration=report,
                   confusions=pairs, ood=section)


def _pairs(result: EvalResult, classes: list[str], top: int) -> list[dict[str, Any]]:
    from fgcli.engine.confusions import confused_pairs

    return confused_pairs(result.confusion, classes, top) if top and result.num_samples else []


def _ood(model: Any, images: Any, book: Any, info: Any, temperature: float | None, reject: dict[str, Any] | None,
         split: str, batch_size: int, workers: int, device: Any) -> dict[str, Any]:
    """Score the --ood images and compare them with the split's (fgcli.tasks.ood_report)."""
    from fgcli.tasks.ood_report import ood_section, score_images

    log.info(f"--ood: scoring {len(images.paths)} images of {images.where}")
    with progress_bar() as bar:
        task = bar.add_task("eval --ood", total=len(images.paths))
        scored = score_images(model, images, info.preprocess, len(info.classes), batch_size=batch_size,
                              workers=workers, device=device, progress=lambda n: bar.advance(task, n))
    section = ood_section(book, scored, temperature=temperature, reject=reject, classes=info.classes, split=split)
    for warning in section["warnings"]:
        log.warning(f"--ood: {warning}")
    return section


def _confusions_page(path: Path, pairs: list[dict[str, Any]], book: Any, chosen: Any, info: Any,
                     temperature: float | None, model: Any, device: Any, title: str, meta: list[str]) -> Path:
    """confusions.html: the split's images of each pair with their predictions (and attention maps for a .pt)."""
    import numpy as np

    from fgcli.data.dataset import ManifestDataset
    from fgcli.engine.calibration import calibrated_probs
    from fgcli.viz.confusions import write_page

    logits, probs, targets = book.arrays()
    shown = probs[0] if probs is not None else calibrated_probs(logits[0], temperature or 1.0)
    preds = np.asarray(logits[0]).argmax(axis=1)
    top = np.asarray(shown)[np.arange(len(preds)), preds]
    samples = chosen.samples[:len(preds)]
    failed = set(getattr(chosen.loader.dataset, "failed_paths", []))
    usable = np.array([s.path not in failed for s in samples], dtype=bool)
    source = ManifestDataset(samples, chosen.dataset.source_root, crop_bottom=int(chosen.dataset.crop_bottom or 0))
    note = "" if model is not None else ("no attention maps: an exported model file holds only the fused "
                                         "prediction; evaluate the .pt checkpoint to see where the model looks")
    return write_page(path, pairs, labels=np.asarray(targets), preds=preds, probs=top, usable=usable,
                      names=[s.path for s in samples], load=source.load, classes=info.classes,
                      pre=info.preprocess, title=title, meta=meta, model=model, method=info.method, device=device,
                      temperature=temperature or 1.0, note=note)


def _calibration(book: Any, temperature: float | None, tta: str | None, calibration: bool,
                 fit: dict[str, Any] | None = None) -> Any:
    from fgcli.engine.calibration import calibration_report

    return calibration_report(book, temperature, tta=tta, calibrated=calibration, fit=fit)


def _plot_reliability(report: Any, path: Path, title: str) -> Path:
    """reliability.png: the shown probabilities (with TTA when asked), uncalibrated and calibrated."""
    from fgcli.engine.calibration import plot_reliability

    tta = report.tta_before is not None
    before = report.tta_before if tta else report.before
    after = (report.tta_after if tta else report.after) if report.temperature else None
    suffix = f" (fused, {report.tta} TTA)" if tta else " (fused)"
    if report.temperature:
        suffix += f", T = {report.temperature:.3f}"
    return plot_reliability(before, path, after=after, title=title + suffix)


def calibration_table(report: Any) -> Any:
    """Rows: the fused prediction uncalibrated / calibrated (and with TTA); columns top-1, ECE, MCE, NLL, Brier."""
    from rich.table import Table

    table = Table(title="Calibration of the fused prediction")
    for name in ("probabilities", "top-1 %", "ECE %", "MCE %", "NLL", "Brier", "mean conf. %"):
        table.add_column(name, justify="left" if name == "probabilities" else "right")
    t = report.temperature
    rows = [("uncalibrated", report.before), (f"calibrated (T={t:.3f})" if t else "calibrated: no temperature",
                                               report.after)]
    if report.tta_before is not None:
        rows += [(f"{report.tta} TTA, uncalibrated", report.tta_before),
                 (f"{report.tta} TTA, calibrated" if t else f"{report.tta} TTA, no temperature", report.tta_after)]
    for name, rel in rows:
        table.add_row(name, f"{100 * rel.accuracy:.2f}", f"{100 * rel.ece:.2f}", f"{100 * rel.mce:.2f}",
                      f"{rel.nll:.4f}", f"{rel.brier:.4f}", f"{100 * rel.mean_confidence:.1f}")
    caption = [f"ECE over 15 equal-width confidence bins; {report.selective_line()}"]
    if report.tta_after is not None:
        change = 100 * (report.tta_after.accuracy - report.after.accuracy)
        caption.append(f"{report.tta} TTA changes top-1 by {change:+.2f} points")
    if report.fit and report.fit.get("reason"):
        caption.append(report.fit["reason"])
    table.caption = "\n".join(caption)
    return table

