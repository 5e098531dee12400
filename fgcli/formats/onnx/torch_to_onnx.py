"""torch -> ONNX for the fused prediction of any Method: one graph, input `images`, outputs `logits`, `probs`.

Exporter choice (README, "ONNX export"): `auto` (default) uses the torch.export-based exporter (`dynamo`,
opset 18) and falls back to the TorchScript-based one (`torchscript`, opset 17) for graphs dynamo cannot
take (e.g. timm's MaxViT); either can be forced with `--exporter`. Both are checked against torch
(`fgcli.parity`) on every export.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fgcli.console import log, settings
from fgcli.engine.fused import FusedPrediction
from fgcli.errors import UserError, unknown_choice

#: exporter name -> its default (and lowest supported) opset
EXPORTERS: dict[str, int] = {"dynamo": 18, "torchscript": 17}
#: "auto": dynamo, falling back to torchscript for the graphs dynamo cannot take (see the module docstring)
DEFAULT_EXPORTER = "auto"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
_PROTOBUF_LIMIT = 2 * 1024**3


class FusedModel(FusedPrediction):
    """What the ONNX graph computes: the method's fused logits (raw) and calibrated probabilities, over the
    test-time augmented views (fgcli.engine.fused); the temperature is a constant of the graph."""


@dataclass
class Exported:
    """An exported graph and how it was made."""

    proto: Any  # onnx.ModelProto
    exporter: str
    opset: int


def resolve_opset(exporter: str, opset: int | None) -> int:
    """The opset to use with `exporter` (its default when None), checked against what it supports."""
    if exporter not in EXPORTERS:
        raise unknown_choice("exporter", exporter, [*EXPORTERS, "auto"])
    lowest = EXPORTERS[exporter]
    if opset is None:
        return lowest
    if exporter == "dynamo" and opset < lowest:
        raise UserError(f"--opset {opset} is too old for the dynamo exporter (needs >= {lowest}). Use --opset "
                        f"{lowest} or higher, or --exporter torchscript for opset 13-17.")
    if exporter == "torchscript" and not 13 <= opset <= 20:
        raise UserError(f"--opset {opset} is not supported by the torchscript exporter; use 13-20.")
    return opset


def export_graph(model: nn.Module, img_size: int, *, dynamic_batch: bool = True, exporter: str = DEFAULT_EXPORTER,
                 opset: int | None = None, batch: int = 2, temperature: float = 1.0,
                 tta: str | None = None) -> Exported:
    """Export `model.predict` (eval mode, CPU, fp32) to ONNX with outputs logits / probs.

    The trace runs on `batch` random images of `img_size`² (`dynamic_batch` keeps the batch dimension
    symbolic, named "batch"). `exporter="auto"` tries dynamo and falls back to torchscript when dynamo
    fails (or when `opset` is below dynamo's 18). `temperature` calibrates `probs` (1.0: none); `tta` 'flip'
    puts the mirrored view and the averaging into the graph.
    """
    if exporter not in (*EXPORTERS, "auto"):
        raise unknown_choice("exporter", exporter, [*EXPORTERS, "auto"])
    wrapper = FusedModel(model, temperature, tta).eval()
    example = torch.randn(batch if dynamic_batch else 1, 3, img_size, img_size)
    with torch.inference_mode():
        wrapper(example)  # dry run: shape errors surface here with a torch traceback, not from the exporter
    if exporter != "auto":
        return _export_with(wrapper, example, exporter, resolve_opset(exporter, opset), dynamic_batch)
    if opset is not None and opset < EXPORTERS["dynamo"]:
        return _export_with(wrapper, example, "torchscript", resolve_opset("torchscript", opset), dynamic_batch)
    try:
        return _export_with(wrapper, example, "dynamo", resolve_opset("dynamo", opset), dynamic_batch)
    except _ExportFailed as first:
        log.warning(f"the dynamo exporter failed ({first.reason}); falling back to the torchscript exporter")
        try:
            return _export_with(wrapper, example, "torchscript", resolve_opset("torchscript", opset), dynamic_batch)
        except _ExportFailed as second:
            raise UserError(f"ONNX export failed with both exporters: dynamo ({first.reason}); torchscript "
                            f"({second.reason}). Rerun with --debug for the traces.") from second


class _ExportFailed(UserError):
    def __init__(self, exporter: str, reason: str) -> None:
        super().__init__(f"ONNX export with the {exporter} exporter failed ({reason}). Try another --exporter "
                         "(dynamo, torchscript), or rerun with --debug for the full trace.")
        self.reason = reason


def _export_with(wrapper: nn.Module, example: torch.Tensor, exporter: str, opset: int,
                 dynamic_batch: bool) -> Exported:
    import onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            if exporter == "dynamo":
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                program = torch.onnx.export(wrapper, (example,), None, dynamo=True, opset_version=opset,
                                            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                            dynamic_shapes=shapes, external_data=False, optimize=True,
                                            verbose=False)
                proto = program.model_proto
            else:
                axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
                buffer = io.BytesIO()
                torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                                  do_constant_folding=True)
                proto = onnx.load_from_string(buffer.getvalue())
    except Exception as e:
        if settings.debug:
            log.exception(f"{exporter} exporter")
        text = " ".join(str(e).split())
        raise _ExportFailed(exporter, f"{type(e).__name__}: {text[:240]}") from e
    log.debug(f"exported with {exporter} (opset {opset}): {len(proto.graph.node)} nodes")
    return Exported(proto=proto, exporter=exporter, opset=opset)


def check_graph(proto: Any, source: str = "the exported graph") -> None:
    """Run `onnx.checker` (with shape inference); a failure is an fgcli bug, reported clearly."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UserError(f"onnx.checker rejected {source}: {str(e).splitlines()[0][:300]}. "
                        "Try --exporter torchscript, or report this with the --debug trace.") from e


def save_model(proto: Any, path: str | Path) -> int:
    """Write a ModelProto atomically; returns the number of bytes."""
    from fgcli.io import atomic_write_bytes

    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise UserError(f"the model is {proto.ByteSize() / 1024**3:.1f} GiB, above ONNX's 2 GiB single-file "
                        "limit (external-data files are not supported); use a smaller backbone.")
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    return len(data)


def load_model(path: str | Path) -> Any:
    """Load an ONNX file with a clear error for a missing, truncated or non-ONNX file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist. Check the path, or export one with `fgcli export`.")
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a readable ONNX file ({type(e).__name__}); it may be truncated or "
                        "corrupt. Re-export it with `fgcli export CHECKPOINT --onnx`.") from e
