"""`fgcli eval`: parse the flags, delegate to fgcli.api.evaluate, print the result."""

from __future__ import annotations

import typer

from fgcli.commands import _common as flags
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
    ema: bool = flags.ema_option(),
    calibration: bool = flags.calibration_option("Selective-prediction line from the calibrated probabilities (default) "
                                           "or the raw ones. Both are always reported."),
    tta: str = flags.tta_option("average the image and its mirror in probability space; its effect is reported"),
    providers: str | None = flags.providers_option(),
    precision: str = flags.precision_option(),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="Intra-op threads of onnxruntime / OpenVINO (.onnx) or torch (.pt); "
                                            "default: the runtime's own."),
    ood: str | None = typer.Option(None, "--ood", metavar="DIR",
                                   help="Images of classes the model was not trained on (a folder, searched "
                                        "recursively, or a prepared data set: its test split): AUROC and FPR at 95% "
                                        "TPR of each score separating them from the split."),
    confusions: int = typer.Option(5, "--confusions", min=0,
                                   help="Most-confused class pairs to report and draw in confusions.html (0: "
                                        "none)."),
) -> None:
    """Evaluate a checkpoint on a split: top-1/top-5 fused and per head, per-class accuracy, confusion matrix.

    Also the fused prediction's calibration: ECE / MCE / NLL / Brier before and after, reliability.png, selective prediction; the most-confused class pairs, drawn in confusions.html (test images, predictions, attention maps); with --ood, how well the model tells its classes from others.

    Examples:
      fgcli eval runs/train/exp/weights/best.pt                      # the data it was trained on
      fgcli eval runs/train/exp/weights/best.pt --data demo
      fgcli eval runs/train/exp/weights/best.pt --data ./CUB_200_2011 --split test --out reports/cub
      fgcli eval best.pt --tta flip
      fgcli eval best.onnx --data ./flowers102 --providers openvino --precision bf16
      fgcli eval best.pt --ood ./photos_of_other_species/
    """
    from fgcli import api
    from fgcli.console import console
    from fgcli.options import EvalOptions

    run = api.evaluate(checkpoint, options=EvalOptions(
        data=data, split=split, batch_size=batch_size, device=device, out=out, workers=workers, ema=ema,
        calibration=calibration, tta=tta, providers=providers, precision=precision, threads=threads, ood=ood,
        confusions=confusions))
    console.print(run.table())
    if run.calibration is not None:
        console.print(run.calibration_table())
    if confusions:
        console.print(run.confusions_table())
    if run.ood is not None:
        console.print(run.ood_table())
    files = [run.files[k] for k in ("metrics", "per_class", "confusion", "reliability", "confusions_html")
             if k in run.files]
    console.print(f"report: {', '.join(str(f) for f in files)}")
