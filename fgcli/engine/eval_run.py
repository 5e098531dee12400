"""`fgcli eval` for a `.pt` checkpoint: rebuild the model, run a split, write the report."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgcli.console import console, err_console, log, settings
from fgcli.engine.evaluate import EvalResult, evaluate_model, results_table, write_report
from fgcli.errors import UserError


@dataclass
class EvalRun:
    """The result and where the report went."""

    result: EvalResult
    out_dir: Path
    files: dict[str, Path]


def check_classes(expected: list[str], got: list[str], data: str) -> None:
    """The model's class names must equal the data's (same names, same order)."""
    if list(expected) == list(got):
        return
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if not missing and not extra:
        first = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
        detail = f"same names in a different order (index {first}: model '{expected[first]}', data '{got[first]}')"
    else:
        detail = (f"model has {len(expected)}, data has {len(got)}"
                  + (f"; only in the model: {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "")
                  + (f"; only in the data: {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else ""))
    raise UserError(f"the checkpoint's classes do not match the data at {data}: {detail}. Evaluate on the data set "
                    "the model was trained on.")


def default_out_dir(checkpoint: Path, project: str | Path = "runs/eval") -> Path:
    """runs/eval/<run name> (or the checkpoint's stem), incremented so that earlier reports stay."""
    from fgcli.engine.rundir import increment_path

    name = checkpoint.parent.parent.name if checkpoint.parent.name == "weights" else checkpoint.stem
    return increment_path(project, name or "exp")


def resolve_split(dataset: Any, split: str, data: str) -> list:
    """The samples of `split`, with a clear error listing the splits that exist."""
    available = [k for k, v in getattr(dataset, "splits", {}).items() if v]
    samples = list(dataset.splits.get(split) or [])
    if not samples:
        raise UserError(f"--split {split}: the data at {data} has no '{split}' images. Available splits: "
                        f"{', '.join(available) or '(none)'}.")
    return samples


def run_data(cfg: Any, alternative: str) -> str:
    """The data path a run was trained on; a clear error naming `alternative` when it is not here."""
    data = str(cfg.data.path)
    if data != "demo" and not Path(data).exists():
        raise UserError(f"the run's data {data} does not exist here: pass {alternative}.")
    return data


def eval_checkpoint(checkpoint: str | Path, data: str | None = None, split: str = "test", batch_size: int = 64,
                    device: str = "auto", out: str | Path | None = None, workers: int | None = None,
                    use_ema: bool = True) -> EvalRun:
    """Evaluate a `.pt` on a data split and write metrics.json, per_class_accuracy.csv, confusion_matrix.png.

    `data` None: the data set the run was trained on (a `.pt` records it; an `.onnx` does not).
    """
    from fgcli.data.loaders import build_loader
    from fgcli.data.prepare import resolve_data
    from fgcli.data.transforms import eval_transform
    from fgcli.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
    from fgcli.engine.distributed import resolve_device

    path = Path(checkpoint)
    if path.suffix.lower() == ".onnx":  # an exported model: onnxruntime feeds the same metrics and report
        from fgcli.inference import eval_onnx

        if data is None:
            raise UserError(f"{path} is an ONNX model, which does not record its training data: pass --data PATH "
                            "(e.g. --data demo or the data set root).")
        return eval_onnx(path, data, split=split, batch_size=batch_size, device=device, out=out, workers=workers)
    ckpt = load_checkpoint(path)
    dev = resolve_device(device)
    model, classes, preprocess, cfg = build_model_from_checkpoint(ckpt, use_ema=use_ema, device=dev)
    if data is None:
        data = run_data(cfg, "--data PATH")
    # the run's own data settings (val_fraction, demo parameters), so "--split val" is the split it validated on
    if data != cfg.data.path:
        cfg.data.path, cfg.data.format = data, "auto"
    dataset = resolve_data(cfg.data)
    check_classes(classes, list(dataset.classes), data)
    samples = resolve_split(dataset, split, data)
    crop_bottom = int(getattr(dataset, "crop_bottom", 0) or 0)
    loader = build_loader(samples, dataset.source_root, eval_transform(preprocess), batch_size, train=False,
                          workers=cfg.data.workers if workers is None else workers, crop_bottom=crop_bottom)
    t0 = time.perf_counter()
    progress = None if settings.quiet else _progress()
    with progress if progress is not None else contextlib.nullcontext():
        task = progress.add_task(f"eval {split}", total=len(samples)) if progress is not None else None
        acc = evaluate_model(model, loader, dev, len(classes),
                             progress=(lambda n: progress.advance(task, n)) if progress is not None else None)
    seconds = time.perf_counter() - t0
    result = acc.result()
    if result.num_samples != len(samples):
        log.warning(f"evaluated {result.num_samples} images but the split has {len(samples)}")
    out_dir = Path(out) if out is not None else default_out_dir(path)
    extra = {"checkpoint": str(path), "data": str(data), "split": split, "method": ckpt["method"],
             "backbone": ckpt["backbone"], "epoch": ckpt["epoch"], "weights": "ema" if use_ema and ckpt.get("ema")
             else "model", "device": str(dev), "seconds": round(seconds, 3)}
    files = write_report(result, classes, out_dir, extra=extra, title=f"{ckpt['method']} on {split}")
    console.print(results_table(result, title=f"{ckpt['method']} / {ckpt['backbone']} on {data} [{split}]"))
    console.print(f"report: {files['metrics']}, {files['per_class']}, {files['confusion']}")
    return EvalRun(result, out_dir, files)


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)

