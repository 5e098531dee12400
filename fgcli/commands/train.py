"""`fgcli train`: parse the flags, delegate to fgcli.api.train, print the summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from fgcli.commands._common import handle_errors
from fgcli.console import console

if TYPE_CHECKING:
    from fgcli.engine.trainer import TrainResult

_DATA = "Data"
_RUN = "Run folder"
_OPT = "Optimisation"
_HW = "Hardware"


@handle_errors(fast_exit=True)
def train_command(
    method: str | None = typer.Option(None, "--method", "-m", help="Method: baseline, herbs, mge, probe (linear probe: frozen backbone, converged fit)."),
    data: str | None = typer.Option(None, "--data", "-d", rich_help_panel=_DATA,
                                       help="Prepared folder, raw dataset root, ImageFolder, or 'demo'."),
    backbone: str | None = typer.Option(None, "--backbone", "-b", help="Any timm model name."),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="Recipe YAML (path or name in models/)."),
    config: str | None = typer.Option(None, "--config", "-c", help="A full config, e.g. a run's args.yaml."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", min=1, rich_help_panel=_OPT),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, rich_help_panel=_OPT,
                                             help="Per-process batch size (under torchrun: x processes)."),
    accum_steps: int | None = typer.Option(None, "--accum-steps", min=1, rich_help_panel=_OPT,
                                              help="Gradient accumulation: micro-batches per optimizer update."),
    lr: float | None = typer.Option(None, "--lr", rich_help_panel=_OPT, help="Base learning rate."),
    img_size: int | None = typer.Option(None, "--img-size", rich_help_panel=_DATA,
                                           help="Input size (default: the backbone's)."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=0, rich_help_panel=_DATA),
    device: str | None = typer.Option(None, "--device", rich_help_panel=_HW, help="auto | cpu | cuda | cuda:N"),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", rich_help_panel=_HW,
                                       help="Mixed precision (default: train.speed auto: on with CUDA; on CPU where "
                                            "measured faster and the method passed its bf16 accuracy check)."),
    ema: bool | None = typer.Option(None, "--ema/--no-ema", rich_help_panel=_OPT, help="Model EMA (timm)."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained",
                                              help="timm pretrained weights for the backbone."),
    pretrained_file: str | None = typer.Option(None, "--pretrained-file",
                                                  help="Backbone weights: a local state dict, a weights package, or "
                                                       "another run's best.pt (its trained backbone)."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", rich_help_panel=_HW,
                                           help="torch.compile the model."),
    seed: int | None = typer.Option(None, "--seed", rich_help_panel=_OPT),
    deterministic: bool | None = typer.Option(None, "--deterministic/--no-deterministic", rich_help_panel=_HW,
                                                 help="Deterministic algorithms (exact resume on CPU)."),
    project: str | None = typer.Option(None, "--project", rich_help_panel=_RUN, help="Default runs/train."),
    name: str | None = typer.Option(None, "--name", rich_help_panel=_RUN, help="Run name (default exp, exp2...)."),
    exist_ok: bool | None = typer.Option(None, "--exist-ok", rich_help_panel=_RUN,
                                            help="Reuse an existing run folder of that name."),
    resume: str | None = typer.Option(None, "--resume", rich_help_panel=_RUN, metavar="[RUN|PT]",
                                         help="Continue a run: a run folder, a last.pt, or 'auto' (the latest run)."),
    logger: list[str] | None = typer.Option(None, "--logger", rich_help_panel=_RUN,
                                            help="Experiment tracker, repeatable: tensorboard (<run>/tb), mlflow."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help="Override any config key: --set optim.lr=0.01"),
) -> None:
    """Train a method on a backbone and data set; writes runs/train/exp*/ (weights, results, plots).

    Examples:
      fgcli train --method baseline --data demo
      fgcli train --method herbs --data ./CUB_200_2011 --recipe herbs_swin_large_384_cub
      fgcli train --resume runs/train/exp
      fgcli train --method herbs --data ./flowers102 --logger tensorboard --logger mlflow
      torchrun --nproc-per-node 4 -m fgcli train --method herbs --data ./CUB_200_2011
    """
    from fgcli import api

    result = api.train(method, data, recipe=recipe, config=config, resume=resume, set=set_, backbone=backbone,
                       epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr, img_size=img_size,
                       workers=workers, device=device, amp=amp, ema=ema, pretrained=pretrained,
                       pretrained_file=pretrained_file, compile=compile, seed=seed, deterministic=deterministic,
                       project=project, name=name, exist_ok=exist_ok, logger=logger or None)
    if result.is_main:
        print_summary(result)


def print_summary(result: TrainResult, command: str = "train") -> None:
    """The run's summary table and the next commands."""
    from rich.table import Table

    cfg = result.config
    table = Table(title=f"fgcli {command}: {cfg.method} on {cfg.model.backbone}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run folder", str(result.run_dir))
    epochs = str(result.epochs_done)
    if result.early_stop:
        from fgcli.engine.rundir import early_stop_reason

        epochs += f" of {cfg.train.epochs}: stopped early, {early_stop_reason(result.early_stop)}"
    table.add_row("epochs", epochs)
    if result.best_metric is not None:
        table.add_row(f"best val top-1 ({result.val_split})", f"{result.best_metric:.2f}% (epoch {result.best_epoch})")
    last = result.history[-1] if result.history else {}
    if "val/top1" in last:
        table.add_row("last val top-1 / top-5", f"{last['val/top1']:.2f}% / {last['val/top5']:.2f}%")
    table.add_row("chance level", f"{100.0 / max(len(result.classes), 1):.2f}%")
    if result.calibration:
        from fgcli.engine.calibration import record_line

        table.add_row("calibration (best.pt)", record_line(result.calibration))
    table.add_row("weights", f"{result.best if result.best.is_file() else '-'}\n{result.last}")
    console.print(table)
    ckpt = result.best if result.best.is_file() else result.last
    data_arg = cfg.data.path
    console.print(f"next: fgcli eval {ckpt} --data {data_arg}")
    console.print(f"      fgcli export {ckpt} --onnx --verify")

