"""`fgcli bench`: parse the flags, delegate to fgcli.api.bench, print the table and write the CSV."""

from __future__ import annotations

import typer

from fgcli.commands._common import ema_option, handle_errors


@handle_errors
def bench_command(
    model: str = typer.Argument(..., metavar="MODEL", help="A .pt checkpoint or an exported file "
                                                                    "(.onnx, or OpenVINO .xml)."),
    backends: str | None = typer.Option(None, "--backends",
                                        help="Comma-separated: torch,onnx,openvino (default: all the model has; an "
                                             ".onnx file has onnx only unless --checkpoint is given, a .pt has both via a "
                                             "temporary export)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
    img_size: int | None = typer.Option(None, "--img-size", min=8, help="Input size (default: the model's)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed runs per batch size."),
    iters: int = typer.Option(20, "--iters", min=1, help="Timed runs per batch size."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="Threads for torch, onnxruntime and OpenVINO alike (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N (both backends)."),
    providers: str | None = typer.Option(None, "--providers",
                                         help="onnxruntime providers, comma-separated, each timed on its own: cpu, "
                                              "cuda, tensorrt, openvino, or all (those usable here; the rest are "
                                              "listed as skipped). Default: the one --device picks."),
    precision: str | None = typer.Option(None, "--precision",
                                         help="OpenVINO precisions, comma-separated (default f32,bf16; bf16 only on "
                                              "CPUs with AVX-512 BF16 / AMX, elsewhere skipped with a note)."),
    checkpoint: str | None = typer.Option(None, "--checkpoint",
                                          help=".onnx MODEL: the .pt it was exported from, timed as torch eager "
                                               "fp32 and used as the reference."),
    images: str | None = typer.Option(None, "--images",
                                      help="A folder of images to compare top-1 on (default: random inputs)."),
    max_images: int = typer.Option(64, "--max-images", min=1, help="At most this many of --images."),
    verify: bool = typer.Option(False, "--verify",
                                help="Exit 1 when a backend misses its precision's tolerance against the reference (the first "
                                     "row; fgcli.parity.TOLERANCES): fp32 beyond max |Δprob| 1e-4 (1e-3 on a GPU) "
                                     "or any top-1 change; bf16 / fp16 under 99 %, int8 under 95 % top-1 "
                                     "agreement."),
    min_agreement: float | None = typer.Option(None, "--min-agreement", min=0.0, max=100.0,
                                               help="--verify: the top-1 agreement (%) bf16 / fp16 / int8 need."),
    out: str | None = typer.Option(None, "--out", "-o", help="Also write the table as CSV."),
    ema: bool = ema_option(".pt only: use the EMA weights when present."),
) -> None:
    """Measure latency (p50 / p90 per batch) and throughput per backend and batch size, side by side.

    Inputs are the same seeded random batches for every backend, with the same thread count. Every backend is
    compared with the first one (torch eager fp32 when there is a checkpoint): top-1 agreement and max |Δprob|
    on --images (or random inputs). MODEL's <stem>.int8.onnx, when it sits beside it, is timed too.

    Examples:
      fgcli bench runs/train/exp/weights/best.pt --batch-sizes 1,8 --out bench.csv
      fgcli bench best.onnx --threads 4 --iters 50
      fgcli bench best.onnx --checkpoint best.pt --providers cpu,openvino --images photos/ --verify
    """

    from rich.markup import escape

    from fgcli import api
    from fgcli.console import console, err_console, settings
    from fgcli.errors import UserError
    from fgcli.io import atomic_write_text
    from fgcli.options import BenchOptions
    from fgcli.tasks.bench_formats import parse_ints, rows_csv, rows_table

    options = BenchOptions(backends=backends, batch_sizes=parse_ints(batch_sizes, "--batch-sizes"),
                           img_size=img_size, warmup=warmup, iters=iters, threads=threads, device=device,
                           providers=providers, ema=ema, precisions=precision, checkpoint=checkpoint,
                           images=images, max_images=max_images, verify=verify, min_agreement=min_agreement)
    say = None if settings.quiet else (lambda text: err_console.print(f"[dim]bench: {escape(text)}[/]"))
    report = api.bench(model, options, progress=say)
    console.print(rows_table(report.rows, title=f"Inference benchmark: {model}"))
    if report.reference:
        console.print(escape(f"compared with {report.reference} on {report.parity_inputs}"), soft_wrap=True)
    for note in report.notes:
        console.print(escape(note), soft_wrap=True)
    if report.skipped:
        console.print(escape(f"skipped: {'; '.join(report.skipped)}"), soft_wrap=True)
    if out:
        atomic_write_text(out, rows_csv(report.rows))
        console.print(f"wrote {out}")
    if report.failures:
        raise UserError(f"--verify: {len(report.failures)} backend(s) disagree with {report.reference}: "
                        + "; ".join(report.failures))
