"""`fgcli eval`: parse the flags, delegate to fgcli.api.evaluate, print the result."""

from __future__ import annotations

import typer

from fgcli.commands._common import handle_errors


@handle_errors
def eval_command(
    checkpoint: str = typer.Argument(..., help="A .pt checkpoint from `fgcli train` (e.g. runs/train/exp/weights/best.pt) or an .onnx file from `fgcli export`."),
    data: str | None = typer.Option(None, "--data", "-d", help="Prepared folder, raw dataset root, ImageFolder, or 'demo' (default for a .pt: the data it was trained on)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate: test or val."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    out: str | None = typer.Option(None, "--out", "-o", help="Report folder (default runs/eval/<run name>)."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=0, help="Loader workers (default: the run's)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the checkpoint has them."),
) -> None:
    """Evaluate a checkpoint on a split: top-1/top-5 fused and per head, per-class accuracy, confusion matrix.

    Examples:
      fgcli eval runs/train/exp/weights/best.pt                      # the data it was trained on
      fgcli eval runs/train/exp/weights/best.pt --data demo
      fgcli eval runs/train/exp/weights/best.pt --data ./CUB_200_2011 --split test --out reports/cub
    """
    from fgcli import api
    from fgcli.console import console

    run = api.evaluate(checkpoint, data, split=split, batch_size=batch_size, device=device, out=out,
                       workers=workers, ema=ema)
    console.print(run.table())
    console.print(f"report: {run.files['metrics']}, {run.files['per_class']}, {run.files['confusion']}")
