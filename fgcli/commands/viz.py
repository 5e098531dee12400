"""`fgcli attention-viz` (alias `viz`): parse the flags, delegate to fgcli.tasks.attention_viz."""

from __future__ import annotations

import typer

from fgcli.commands._common import calibration_option, ema_option, handle_errors


@handle_errors
def viz_command(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="A .pt checkpoint from `fgcli train` (e.g. runs/train/exp/weights/"
                                     "best.pt). .onnx files carry no maps."),
    images: list[str] | None = typer.Argument(None, metavar="IMAGES",
                                              help="Image files, folders or quoted globs. Default: --num images of "
                                              "--split of --data (or of the run's own data)."),
    data: str | None = typer.Option(None, "--data", "-d", help="Prepared folder, raw dataset root, ImageFolder or "
                                    "'demo' (default: the data the run was trained on)."),
    split: str = typer.Option("test", "--split", help="Split to draw images from: test, val or train."),
    num: int = typer.Option(8, "--num", "-n", min=1, help="Images to draw from the split (spread over classes)."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/viz/<run name>)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Opacity of the maps over the image."),
    layout: str = typer.Option("grid", "--layout", help="grid: one figure per image; single: one PNG per panel."),
    score: bool = typer.Option(False, "--score", help="Score the maps against part masks (demo) or boxes (CUB, "
                               "Cars, Aircraft): pointing game and energy inside, vs a random map."),
    score_num: int | None = typer.Option(None, "--score-num", min=1,
                                         help="Score this many images of the split (default: all)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    ema: bool = ema_option(),
    calibration: bool = calibration_option("Titles show calibrated probabilities (default) or raw ones."),
) -> None:
    """Show where the model looks: HERBS score / selection maps per stage, MGE-CNN expert CAMs, crop boxes and
    zooms with the gate weights, the baseline's class activation map. PNGs plus an index.html contact sheet.

    Examples:
      fgcli viz runs/train/exp/weights/best.pt --score
      fgcli attention-viz best.pt bird.jpg ./more_birds/ --out viz/birds
      fgcli viz best.pt --data ./CUB_200_2011 --split test --num 16 --layout single --score
    """
    from fgcli import api
    from fgcli.console import console, err_console
    from fgcli.options import VizOptions
    from fgcli.tasks.attention_viz import box_scores_table, scores_table

    result = api.attention_viz(checkpoint, images or [], options=VizOptions(
        data=data, split=split, num=num, out=out, alpha=alpha, layout=layout, score=score, score_num=score_num,
        device=device, ema=ema, batch_size=batch_size, calibration=calibration))
    if result.scores:
        console.print(scores_table(result.scores, result.score_target or "the target"))
    if result.box_scores:
        console.print(box_scores_table(result.box_scores, result.score_target or "the target"))
    for name, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/] {name}: {reason}", soft_wrap=True)
    console.print(f"{len(result.figures)} figure(s) in {result.out_dir}; open {result.index} for the contact sheet")
