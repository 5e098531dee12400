"""`fgcli eval`: score a `.pt` checkpoint (torch, fused output and every head) or an exported `.onnx` model
(onnxruntime, fused output) on a data split, and write the report. Returns an `EvalRun`; printing it is the
command's job."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgcli.console import log, progress_bar
from fgcli.engine.evaluate import EvalResult, evaluate, results_table, write_report
from fgcli.engine.rundir import default_out_dir
from fgcli.errors import UserError


@dataclass
class EvalRun:
    """The result, where the report went, and what was evaluated."""

    result: EvalResult
    out_dir: Path
    files: dict[str, Path]
    title: str = ""
    device: str = ""
    calibration: Any = None  # fgcli.engine.calibration.CalibrationReport

    def table(self) -> Any:
        """The rich table of the fused output and each head."""
        return results_table(self.result, title=self.title)

    def calibration_table(self) -> Any:
        """The rich table of the fused prediction's reliability before / after calibration (and with TTA)."""
        return calibration_table(self.calibration) if self.calibration is not None else None


def eval_checkpoint(checkpoint: str | Path, data: str | None = None, split: str = "test", batch_size: int = 64,
                    device: str = "auto", out: str | Path | None = None, workers: int | None = None,
                    use_ema: bool = True, calibration: bool = True, tta: str | None = None,
                    providers: list[str] | None = None, precision: str | None = None,
                    threads: int | None = None) -> EvalRun:
    """Evaluate a `.pt` or `.onnx` on a data split and write metrics.json, per_class_accuracy.csv,
    confusion_matrix.png and reliability.png into `out` (default runs/eval/<run name>).

    The fused prediction's calibration (ECE, MCE, NLL, Brier before / after the model's fitted temperature,
    selective accuracy / coverage) goes into metrics.json's `calibration` section; `tta` 'flip' adds the
    mirrored view and reports its effect there (top-1 and the rest stay those of the plain view).
    `calibration` False: the selective-prediction line uses the uncalibrated probabilities. `providers` /
    `precision` (`.onnx` only): the onnxruntime providers (e.g. ["openvino"]) and OpenVINO's precision.
    `threads`: onnxruntime's / OpenVINO's intra-op threads, or torch's (None: their defaults).

    `data` None: the data set the run was trained on (a `.pt` records it; an `.onnx` does not). Splits are
    carved with the run's own data settings (stored in the `.pt`, or in the `.onnx` metadata), so `--split val`
    is the split the run validated on.
    """
    from fgcli.config import from_dict
    from fgcli.data.select import resolve_split_data, run_data
    from fgcli.engine.calibration import ScoreBook, stored_calibration, stored_temperature
    from fgcli.engine.fused import check_tta

    path = Path(checkpoint)
    tta = check_tta(tta)
    if path.suffix.lower() == ".onnx":  # an exported model: onnxruntime feeds the same metrics and report
        from fgcli.inference import OnnxPredictor

        if data is None:
            raise UserError(f"{path} is an ONNX model, which does not record its training data: pass --data PATH "
                            "(e.g. --data demo or the data set root).")
        model: Any = OnnxPredictor(path, device=device, providers=providers, precision=precision, threads=threads)
        info, where, torch_device = model.info, model.device, None
        if len(model.session.get_providers()) > 1:
            log.info(f"{model.device}: {model.placement_line()}")
        temperature = model.temperature
        fit = json.loads(info.extra["calibration"]) if info.extra.get("calibration") else None
        if model.graph_tta is not None:
            if tta is not None:
                log.info(f"{path.name} was exported with --tta {model.graph_tta}: its outputs already average the "
                         "views")
            tta = None
        data_cfg = from_dict({"data": json.loads(info.extra.get("data_config", "{}"))},
                             source=f"{path} metadata").data
        extra = {"model": str(path), "precision": info.precision, "inference_precision": model.precision,
                 "source_checkpoint_sha256": info.source_sha256,
                 "tta_in_graph": model.graph_tta or "none"}
        title = f"{info.method} / {info.backbone} (onnx, {info.precision})"
        report_title = f"{info.method} (onnx) on {split}"
        log.info(f"evaluating {path.name} on {where}")
    else:
        from fgcli.engine.checkpoint import load_model
        from fgcli.inference import check_precision

        if providers:
            raise UserError("--providers applies to .onnx models only; for a checkpoint use --device.")
        if check_precision(precision) != "fp32":
            raise UserError(f"--precision {precision} applies to .onnx models on --providers openvino; a "
                            "checkpoint runs in fp32 on torch.")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        loaded = load_model(path, device=device, use_ema=use_ema)
        model, info, torch_device, data_cfg = loaded.model, loaded.info, loaded.device, loaded.config.data
        temperature = stored_temperature(loaded.checkpoint)
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
    out_dir = Path(out) if out is not None else default_out_dir(path)
    extra = {**extra, "data": str(data), "split": split, "method": info.method, "backbone": info.backbone,
             "device": where, "seconds": round(time.perf_counter() - t0, 3)}
    report = _calibration(book, temperature, tta, calibration, fit) if result.num_samples else None
    files = write_report(result, info.classes, out_dir, extra={**extra, "tta": tta or "none"}, title=report_title,
                         more={"calibration": report.to_dict()} if report is not None else None)
    if report is not None:
        files["reliability"] = _plot_reliability(report, out_dir / "reliability.png", report_title)
    return EvalRun(result, out_dir, files, title=f"{title} on {data} [{split}]", device=where, calibration=report)


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

