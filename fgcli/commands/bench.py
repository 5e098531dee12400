"""`fgcli bench`: parse the flags, delegate to fgcli.api.bench, print the table and write the CSV."""

from __future__ import annotations

import typer

from fgcli.commands._common import handle_errors


@handle_errors
def bench_command(
    model: str = typer.Argument(..., metavar="MODEL", help="A .pt checkpoint or an exported .onnx file."),
    backends: str | None = typer.Option(None, "--backends",
                                        help="Comma-separated: torch,onnx (default: all the model has; an .onnx "
                                             "file has onnx only, a .pt has both via a temporary export)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
    img_size: int | None = typer.Option(None, "--img-size", min=8, help="Input size (default: the model's)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed runs per batch size."),
    iters: int = typer.Option(20, "--iters", min=1, help="Timed runs per batch size."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="Threads for torch and onnxruntime alike (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N (both backends)."),
    providers: str | None = typer.Option(None, "--providers", help="onnxruntime providers, comma-separated."),
    out: str | None = typer.Option(None, "--out", "-o", help="Also write the table as CSV."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help=".pt only: use the EMA weights when present."),
) -> None:
    """Measure latency (p50 / p90 per batch) and throughput per backend and batch size, side by side.

    Inputs are the same seeded random batches for every backend; the thread count is the same for both.

    Examples:
      fgcli bench runs/train/exp/weights/best.pt --batch-sizes 1,8 --out bench.csv
      fgcli bench best.onnx --threads 4 --iters 50
    """

    from fgcli import api
    from fgcli.benchmark import parse_ints, rows_csv, rows_table
    from fgcli.console import console, err_console, settings
    from fgcli.io import atomic_write_text

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    chosen = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    provider_list = [p.strip() for p in providers.split(",") if p.strip()] if providers else None
    say = None if settings.quiet else (lambda text: err_console.print(f"[dim]bench: {text}[/]"))
    rows = api.bench(model, backends=chosen, batch_sizes=sizes, img_size=img_size, warmup=warmup, iters=iters,
                     threads=threads, device=device, providers=provider_list, ema=ema, progress=say)
    console.print(rows_table(rows, title=f"Inference benchmark: {model}"))
    if out:
        atomic_write_text(out, rows_csv(rows))
        console.print(f"wrote {out}")
