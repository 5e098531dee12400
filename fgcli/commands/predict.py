"""`fgcli predict`: parse the flags, delegate to fgcli.api.predict, print the table."""

from __future__ import annotations

import typer

from fgcli.commands import _common as flags
from fgcli.commands._common import handle_errors


@handle_errors
def predict_command(
    model: str = typer.Argument(..., metavar="MODEL", help="A .pt checkpoint or an exported file "
                                                                    "(.onnx, or OpenVINO .xml)."),
    sources: list[str] = typer.Argument(..., metavar="SOURCE...",
                                        help="Image files, folders (searched recursively) or quoted globs."),
    topk: int = typer.Option(5, "--topk", "-k", min=1, help="Classes to report per image."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    out: str | None = typer.Option(None, "--out", "-o", help="Write the predictions to a .csv or .json file."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    providers: str | None = flags.providers_option(),
    precision: str = flags.precision_option(),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Inference threads (default: physical cores)."),
    workers: int = typer.Option(4, "--workers", "-w", min=1, help="Threads decoding images."),
    ema: bool = flags.ema_option(".pt only: use the EMA weights when present."),
    calibration: bool = flags.calibration_option("Calibrated probabilities (the model's fitted temperature, default) or "
                                           "the raw ones. The predicted classes are the same."),
    tta: str = flags.tta_option("average the image and its mirror, after calibration; a file exported with --tta flip "
                          "already does it"),
    reject: bool = typer.Option(False, "--reject",
                                help="Answer 'unknown' (probabilities still shown) when the top-1 probability is below "
                                     "the model's rejection threshold (fitted on val by training or `fgcli "
                                     "calibrate --reject-recall`)."),
) -> None:
    """Classify images with a checkpoint or an .onnx file: a table of top-k classes, optional CSV / JSON.

    An .onnx file needs nothing beside it: classes and preprocessing come from its metadata. Unreadable images are reported and skipped.

    Examples:
      fgcli predict runs/train/exp/weights/best.onnx bird.jpg ./more_photos/
      fgcli predict best.pt 'photos/**/*.jpg' --topk 3 --out predictions.csv
      fgcli predict best.pt bird.jpg --tta flip --no-calibration
      fgcli predict best.onnx photos/ --providers openvino --precision bf16
      fgcli predict best.onnx field_photos/ --reject --out answers.csv
    """
    from fgcli import api
    from fgcli.console import console, err_console, progress_bar
    from fgcli.options import PredictOptions
    from fgcli.tasks.predict_images import collect_images, results_table

    options = PredictOptions(topk=topk, batch_size=batch_size, out=out, device=device, providers=providers,
                             threads=threads, workers=workers, ema=ema, calibration=calibration, tta=tta,
                             precision=precision, reject=reject)
    paths = collect_images(sources)
    loaded = api.load(model, options.load_options())
    err_console.print(f"{model}: {loaded.info.method} / {loaded.info.backbone}, "
                      f"{len(loaded.classes)} classes, on {loaded.predictor.device}")
    placement = getattr(loaded.predictor, "placement_line", None)
    if options.providers and placement is not None and placement():
        err_console.print(placement(), soft_wrap=True)
    err_console.print(loaded.predictor.calibration_note(), soft_wrap=True)
    if reject:
        threshold = loaded.predictor.reject_threshold()  # no threshold: one line before any image is read
        recall = (loaded.predictor.reject or {}).get("recall")
        err_console.print(f"--reject: 'unknown' below top-1 probability {threshold:.4f}"
                          + (f" (chosen on the validation split to keep {100 * recall:g}% of its images)" if recall
                             else ""), soft_wrap=True)
    with progress_bar() as bar:
        task = bar.add_task("predict", total=len(paths))
        result = api.predict(loaded, [str(p) for p in paths], options, progress=lambda n: bar.advance(task, n))
    if result.predictions:
        console.print(results_table(result))
    for path, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/] {path}: {reason}", soft_wrap=True)
    if result.skipped:
        err_console.print(f"[yellow]{len(result.skipped)} of {len(paths)} images could not be read and were "
                          "skipped.[/]")
    if out:
        console.print(f"wrote {out}")
