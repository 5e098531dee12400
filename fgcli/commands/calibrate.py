"""`fgcli calibrate`: parse the flags, delegate to fgcli.tasks.calibrate_checkpoint, print before / after."""

from __future__ import annotations

import typer

from fgcli.commands._common import ema_option, handle_errors


@handle_errors
def calibrate_command(
    target: str = typer.Argument(..., metavar="RUN_OR_CHECKPOINT",
                                 help="A run folder (its weights/best.pt is calibrated) or a .pt checkpoint."),
    data: str | None = typer.Option(None, "--data", "-d", help="Prepared folder, raw dataset root, ImageFolder, or "
                                    "'demo' (default: the data the run was trained on)."),
    split: str = typer.Option("val", "--split", help="The held-out split to fit on (val; test is refused)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Write the calibrated checkpoint here instead of in "
                                   "place."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    workers: int | None = typer.Option(None, "--workers", "-w", min=0, help="Loader workers (default: the run's)."),
    ema: bool = ema_option("Fit for the EMA weights when the checkpoint has them."),
    reject_recall: float | None = typer.Option(None, "--reject-recall", min=0.0, max=1.0,
                                               help="Share of the val images the rejection threshold keeps (default: "
                                                    "the checkpoint's, else the run's train.reject_recall, 0.95)."),
) -> None:
    """Fit the temperature of a checkpoint's fused prediction and its rejection threshold on the val split; store them in the checkpoint.

    The write is atomic. predict, eval, export and viz then show calibrated probabilities; `predict --reject` answers unknown below the threshold. Training does this at its end; use it for checkpoints trained before, to refit on other data or for another --reject-recall.

    Examples:
      fgcli calibrate runs/train/exp
      fgcli calibrate old/best.pt --data ./CUB_200_2011 --split val
      fgcli calibrate best.pt --out best.calibrated.pt
      fgcli calibrate best.pt --reject-recall 0.99
    """
    from fgcli import api
    from fgcli.console import console
    from fgcli.options import CalibrateOptions

    result = api.calibrate(target, options=CalibrateOptions(
        data=data, split=split, batch_size=batch_size, device=device, workers=workers, ema=ema, out=out,
        reject_recall=reject_recall))
    console.print(result.table())
    console.print(f"wrote {result.written}  next: fgcli eval {result.written}  |  fgcli export {result.written} "
                  "--onnx")
