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

    def table(self) -> Any:
        """The rich table of the fused output and each head."""
        return results_table(self.result, title=self.title)


def eval_checkpoint(checkpoint: str | Path, data: str | None = None, split: str = "test", batch_size: int = 64,
                    device: str = "auto", out: str | Path | None = None, workers: int | None = None,
                    use_ema: bool = True) -> EvalRun:
    """Evaluate a `.pt` or `.onnx` on a data split and write metrics.json, per_class_accuracy.csv and
    confusion_matrix.png into `out` (default runs/eval/<run name>).

    `data` None: the data set the run was trained on (a `.pt` records it; an `.onnx` does not). Splits are
    carved with the run's own data settings (stored in the `.pt`, or in the `.onnx` metadata), so `--split val`
    is the split the run validated on.
    """
    from fgcli.config import from_dict
    from fgcli.data.select import resolve_split_data, run_data

    path = Path(checkpoint)
    if path.suffix.lower() == ".onnx":  # an exported model: onnxruntime feeds the same metrics and report
        from fgcli.inference import OnnxPredictor

        if data is None:
            raise UserError(f"{path} is an ONNX model, which does not record its training data: pass --data PATH "
                            "(e.g. --data demo or the data set root).")
        model: Any = OnnxPredictor(path, device=device)
        info, where, torch_device = model.info, model.device, None
        data_cfg = from_dict({"data": json.loads(info.extra.get("data_config", "{}"))},
                             source=f"{path} metadata").data
        extra = {"model": str(path), "precision": info.precision, "source_checkpoint_sha256": info.source_sha256}
        title = f"{info.method} / {info.backbone} (onnx, {info.precision})"
        report_title = f"{info.method} (onnx) on {split}"
        log.info(f"evaluating {path.name} on {where}")
    else:
        from fgcli.engine.checkpoint import load_model

        loaded = load_model(path, device=device, use_ema=use_ema)
        model, info, torch_device, data_cfg = loaded.model, loaded.info, loaded.device, loaded.config.data
        where = str(torch_device)
        if data is None:
            data = run_data(loaded.config, "--data PATH")
        extra = {"checkpoint": str(path), "epoch": loaded.checkpoint["epoch"], "weights": loaded.weights}
        title = f"{info.method} / {info.backbone}"
        report_title = f"{info.method} on {split}"
    chosen = resolve_split_data(data_cfg, data, split, info.classes, info.preprocess, batch_size, workers)
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"eval {split}", total=len(chosen.samples))
        acc = evaluate(model, chosen.loader, len(info.classes), device=torch_device,
                       progress=lambda n: bar.advance(task, n))
    result = acc.result()
    if result.num_samples != len(chosen.samples):
        log.warning(f"evaluated {result.num_samples} images but the split has {len(chosen.samples)}")
    out_dir = Path(out) if out is not None else default_out_dir(path)
    extra = {**extra, "data": str(data), "split": split, "method": info.method, "backbone": info.backbone,
             "device": where, "seconds": round(time.perf_counter() - t0, 3)}
    files = write_report(result, info.classes, out_dir, extra=extra, title=report_title)
    return EvalRun(result, out_dir, files, title=f"{title} on {data} [{split}]", device=where)

