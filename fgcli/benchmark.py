"""Latency and throughput of a model per backend (torch eager, onnxruntime) and batch size, on the same inputs
and thread count."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fgcli.errors import UserError
from fgcli.inference import OnnxPredictor, TorchPredictor, is_onnx
from fgcli.timing import BenchRow, bench_predictor

BACKENDS = ("torch", "onnx")


def parse_ints(text: str, flag: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (positive), with a clear error naming the flag."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{flag} '{text}' must be comma-separated integers, e.g. 1,8,32.") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{flag} '{text}' must list positive integers, e.g. 1,8,32.")
    return values


def parse_backends(text: str | None, model: Path) -> list[str]:
    """The backends to run: all that the model has by default; `torch` needs a checkpoint."""
    available = ["onnx"] if is_onnx(model) else ["torch", "onnx"]
    if not text:
        return available
    chosen = [b.strip().lower() for b in text.split(",") if b.strip()]
    for b in chosen:
        if b not in BACKENDS:
            raise UserError(f"--backends: unknown backend '{b}'. Valid: {', '.join(BACKENDS)}.")
        if b not in available:
            raise UserError(f"--backends {b}: {model} is an .onnx file, which only has the onnx backend. Give the "
                            "checkpoint (.pt) to also time torch.")
    return list(dict.fromkeys(chosen))


def bench_model(model: str | Path, backends: Sequence[str], batch_sizes: Sequence[int], *, img_size: int | None = None,
                warmup: int = 3, iters: int = 20, threads: int | None = None, device: str = "auto",
                providers: Sequence[str] | None = None, use_ema: bool = True,
                progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Benchmark a checkpoint (torch, and onnxruntime on a temporary export) or an `.onnx` file."""
    import torch

    path = Path(model)
    if not path.exists():
        raise UserError(f"model file {path} does not exist. Give a checkpoint (.pt) or an exported .onnx file.")
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    rows: list[BenchRow] = []
    if is_onnx(path):
        onnx_pred = OnnxPredictor(path, providers=providers, device=device, threads=threads)
        size = _check_size(img_size, onnx_pred.info.preprocess.img_size, path)
        return bench_predictor(onnx_pred, batch_sizes, size, threads, warmup, iters, progress=progress)
    torch_pred = TorchPredictor(path, device=device, threads=threads, use_ema=use_ema)
    fixed = getattr(torch_pred.model, "input_size", None)
    size = img_size or torch_pred.info.preprocess.img_size
    if fixed is not None and size != fixed:
        raise UserError(f"--img-size {size}: this {torch_pred.info.method} model only accepts {fixed}x{fixed} "
                        f"inputs. Use --img-size {fixed}.")
    if "torch" in backends:
        rows += bench_predictor(torch_pred, batch_sizes, size, threads, warmup, iters, progress=progress)
    if "onnx" in backends:
        from fgcli.exporting.pipeline import export_loaded

        with tempfile.TemporaryDirectory(prefix="fgcli-bench-") as tmp:
            onnx_path = Path(tmp, "model.onnx")
            if progress is not None:
                progress("exporting to a temporary .onnx")
            export_loaded(torch_pred.model.cpu(), torch_pred.info, onnx_path, img_size=size,
                          temperature=torch_pred.fused.temperature)
            onnx_pred = OnnxPredictor(onnx_path, providers=providers, device=device, threads=threads)
            rows += bench_predictor(onnx_pred, batch_sizes, size, threads, warmup, iters, progress=progress)
    return rows


def _check_size(requested: int | None, exported: int, path: Path) -> int:
    if requested is not None and requested != exported:
        raise UserError(f"--img-size {requested}: {path} was exported for {exported}x{exported} inputs. Re-export "
                        f"with `fgcli export CHECKPOINT --onnx --img-size {requested}` or drop --img-size.")
    return exported


def speedups(rows: Sequence[BenchRow], base: str = "torch", other: str = "onnx") -> dict[int, float]:
    """Per batch size: median latency of `base` / median latency of `other` (>1 = `other` is faster)."""
    by = {(r.backend, r.batch): r for r in rows}
    return {b: by[(base, b)].p50_ms / by[(other, b)].p50_ms
            for (name, b) in by if name == other and (base, b) in by}


def rows_csv(rows: Sequence[BenchRow]) -> str:
    """The rows as CSV text (one line per backend x batch size)."""
    buf = io.StringIO()
    fields = list(BenchRow.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in d.items()})
    return buf.getvalue()


def rows_table(rows: Sequence[BenchRow], title: str = "Inference benchmark") -> Any:
    """A rich table of the rows, with the onnx/torch speed-up per batch size when both were measured."""
    from rich.table import Table

    ratio = speedups(rows)
    table = Table(title=title)
    for name, justify in (("backend", "left"), ("device", "left"), ("batch", "right"), ("p50 ms", "right"),
                          ("p90 ms", "right"), ("img/s", "right"), ("vs torch", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        speed = f"{ratio[r.batch]:.2f}x" if r.backend == "onnx" and r.batch in ratio else ""
        table.add_row(r.backend, r.device.replace("ExecutionProvider", ""), str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.throughput:.1f}",
                      speed)
    if rows:
        table.caption = f"{rows[0].img_size}x{rows[0].img_size} inputs, {rows[0].threads} threads, {rows[0].iters} iters"
    return table
