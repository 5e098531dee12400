"""`fgcli export`: parse the flags, delegate to fgcli.api.export, print what was written."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from fgcli.commands._common import calibration_option, ema_option, handle_errors, tta_option
from fgcli.formats import writable_help

_VARIANTS = "fp16 / int8"
_RUNTIME = "Runtime"


@handle_errors
def export_command(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT",
                                     help="A .pt checkpoint from `fgcli train` (any name, e.g. weights/best.pt)."),
    format: str | None = typer.Option(None, "--format", "-f",
                                      help=f"The formats to write, comma-separated: {escape(writable_help())}."),
    onnx: bool = typer.Option(False, "--onnx", help="Same as --format onnx."),
    out: str | None = typer.Option(None, "--out", "-o",
                                   help="The first format's file (default: CHECKPOINT with its suffix); the other "
                                        "files go beside it under the same name, e.g. <stem>.int8.onnx, <stem>.xml."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: 18 for dynamo, 17 for torchscript)."),
    img_size: int | None = typer.Option(None, "--img-size", min=8,
                                        help="Input size (default: the checkpoint's; fixed-size models only accept it)."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch",
                                       help="Symbolic batch dimension (default), or a fixed batch of 1."),
    fp16: bool = typer.Option(False, "--fp16", rich_help_panel=_VARIANTS,
                              help="Also write an fp16 file (sensitive ops stay fp32); meant for GPUs."),
    int8: bool = typer.Option(False, "--int8", rich_help_panel=_VARIANTS,
                              help="Also write an int8 file (static QDQ, calibrated on the run's training images); "
                                   "reports the top-1 change on the validation split and the speed-up on CPU."),
    calib_images: int = typer.Option(128, "--calib-images", min=1, rich_help_panel=_VARIANTS,
                                     help="Training images used to calibrate int8 activations (evenly spread over "
                                          "the train split; never val or test)."),
    calib_method: str = typer.Option("percentile", "--calib-method", rich_help_panel=_VARIANTS,
                                     help="How int8 activation ranges are calibrated: minmax, percentile or entropy."),
    int8_max_drop: float = typer.Option(0.5, "--int8-max-drop", min=0.0, rich_help_panel=_VARIANTS,
                                        help="When int8 loses more top-1 points than this on the validation split, "
                                             "keep the first weight layers in fp32 (1, 2, 4, ...) until it does "
                                             "not. Never judged on test: refused when the run's data has no val "
                                             "split."),
    int8_weights: str = typer.Option("8", "--int8-weights", rich_help_panel=_VARIANTS,
                                     help="int8 weight bits: 8 (default) or 7 (onnxruntime's reduce_range: no "
                                          "saturation on CPUs without VNNI / AMX-INT8, whose kernels add two "
                                          "8-bit products in 16 bits; less precise weights). The file is judged on "
                                          "this CPU's kernels."),
    verify: bool = typer.Option(True, "--verify/--no-verify",
                                help="Compare each file with torch on the run's validation images (else "
                                     "training images, else random; never test), at its precision's tolerance "
                                     "(fgcli.parity): max |Δprob| <= 1e-4 for fp32, top-1 agreement >= 99% for "
                                     "fp16."),
    ema: bool = ema_option("Export the EMA weights when the checkpoint has them."),
    calibration: bool = calibration_option("Divide `probs` by the checkpoint's fitted temperature (a constant in "
                                           "the graph; default) or ship raw ones. `logits` are always raw."),
    tta: str = tta_option("in the graph: it runs the image and its mirror and averages the probabilities"),
    exporter: str | None = typer.Option(None, "--exporter",
                                        help="auto (default: dynamo, falling back to torchscript when dynamo cannot take "
                                             "the graph), dynamo (opset 18) or torchscript (opset 17)."),
    providers: str | None = typer.Option(None, "--providers", rich_help_panel=_RUNTIME,
                                         help="onnxruntime providers for the checks, comma-separated (e.g. cpu or "
                                              "CUDAExecutionProvider,CPUExecutionProvider). Default: CPU."),
    threads: int | None = typer.Option(None, "--threads", min=1, rich_help_panel=_RUNTIME,
                                       help="onnxruntime intra-op threads (default: physical cores)."),
) -> None:
    """Export a checkpoint's fused model in the formats asked (--format), with metadata, parity check and variants.

    One input `images` (N x 3 x H x W, normalised), outputs `logits` and `probs`; the metadata (classes, preprocessing, method, backbone, versions, checkpoint hash) is all `fgcli predict` needs.

    Examples:
      fgcli export runs/train/exp/weights/best.pt --format onnx
      fgcli export model.pt --format onnx --out deploy/model.onnx --int8
      fgcli export best.pt --onnx --fp16 --static-batch --no-verify
      fgcli export best.pt --onnx --tta flip
    """
    from fgcli import api
    from fgcli.console import console
    from fgcli.options import ExportOptions

    formats = ",".join(f for f in (format, "onnx" if onnx else None) if f)  # none: the task says which exist
    result = api.export(checkpoint, options=ExportOptions(
        format=formats, out=out, opset=opset, img_size=img_size, dynamic_batch=dynamic_batch, fp16=fp16, int8=int8,
        calib_images=calib_images, calib_method=calib_method, int8_max_drop=int8_max_drop, int8_weights=int8_weights,
        verify=verify, ema=ema, exporter=exporter, providers=providers, threads=threads, calibration=calibration, tta=tta))
    console.print(_summary(result))
    main = next(iter(result.files.values()))
    console.print(f"next: fgcli predict {main} IMAGES...  |  fgcli eval {main} --data DATA  |  fgcli bench {main}")


def _summary(result: Any) -> Any:
    from rich.table import Table

    from fgcli.formats import get_format

    table = Table(title=f"Export: {result.info.method} / {result.info.backbone}")
    table.add_column("file", overflow="fold")
    table.add_column("format")
    table.add_column("MB", justify="right")
    table.add_column("check", overflow="fold")
    for name, path in result.files.items():
        table.add_row(str(path), get_format(name).title, f"{result.sizes[name] / 1e6:.1f}", result.check_line(name))
    graph = (f", {result.info.extra.get('exporter')} exporter opset {result.info.extra.get('opset')}"
             if result.info.extra.get("opset") else "")
    where = ", ".join(dict.fromkeys(result.devices.values()))
    table.caption = (f"{len(result.info.classes)} classes, {result.info.preprocess.img_size}px input{graph}"
                     + (f", checked on {where}" if where else "") + f", {result.seconds:.1f} s")
    return table
