"""`fgcli distill`: parse the flags (TEACHER, --student, and every `fgcli train` flag), delegate to
fgcli.api.distill, print the run's summary with the teacher beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from fgcli.commands._common import handle_errors, share_options
from fgcli.commands.train import print_summary, train_command
from fgcli.console import console

if TYPE_CHECKING:
    from fgcli.distilling.run import DistillResult


@handle_errors(fast_exit=True)
@share_options(train_command, drop=("method", "backbone"))
def distill_command(
    teacher: str | None = typer.Argument(None, metavar="TEACHER",
                                         help="The teacher: a checkpoint (.pt), a run folder (its weights/best.pt) or "
                                              "its exported .onnx (onnxruntime). Not needed with --resume."),
    student: str | None = typer.Option(None, "--student",
                                       help="The student's backbone, any timm model name (default: the "
                                            "baseline_lite0_128 recipe's EfficientNet-Lite0 at 128 px)."),
    **train_flags: Any,
) -> None:
    """Distil a big, slow teacher (HERBS, MGE-CNN, a baseline at high resolution) into a small baseline student.

    The student learns from the teacher's fused, calibrated probabilities and the labels: (1 - alpha) CE + alpha T^2 KL(teacher || student), with --set distill.alpha=0.5 --set distill.temperature=2.0 (the defaults). The teacher runs frozen on the same augmented batch, resized and normalised for its own input. The result is an ordinary baseline run (runs/distill/exp*) whose checkpoints name the teacher.

    Examples:
      fgcli distill runs/train/exp/weights/best.pt --data ./flowers102
      fgcli distill runs/train/exp/weights/best.onnx --data ./flowers102 --recipe baseline_lite0_128 --seed 1
      fgcli distill runs/train/exp --data ./cub --student mobilenetv3_large_100 --pretrained --img-size 160
      fgcli distill --resume runs/distill/exp
    """
    from fgcli import api

    set_ = train_flags.pop("set_", None)
    data, recipe, config = train_flags.pop("data", None), train_flags.pop("recipe", None), train_flags.pop("config", None)
    resume = train_flags.pop("resume", None)
    train_flags["logger"] = train_flags.get("logger") or None
    result = api.distill(teacher, data, student=student, recipe=recipe, config=config, resume=resume, set=set_,
                         **train_flags)
    if result.is_main:
        print_teacher(result)


def print_teacher(result: DistillResult) -> None:
    """The student's summary (as `fgcli train` prints it), then the teacher it learnt from."""
    print_summary(result, command="distill")
    t = result.teacher
    top1 = f"val top-1 {t['val_top1']:.2f}%" if t.get("val_top1") is not None else "val top-1 not recorded"
    console.print(f"teacher: {t['method']} on {t['backbone']} at {t['img_size']} px, {top1} ({t['teacher']}); "
                  f"alpha {t['alpha']:g}, T {t['temperature']:g}", soft_wrap=True)
