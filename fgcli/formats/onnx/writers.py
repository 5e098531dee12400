"""The ONNX files' writers (fp32 from the torch model, fp16 from the fp32 graph), their metadata, and the reader
of that metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgcli import __version__
from fgcli.errors import UserError
from fgcli.formats.onnx.torch_to_onnx import DEFAULT_EXPORTER, check_graph, export_graph, save_model
from fgcli.modelinfo import ModelInfo, set_metadata

if TYPE_CHECKING:
    from fgcli.formats import ExportJob


def stamp(proto: Any, info: ModelInfo) -> None:
    """Write `info` into the graph's metadata_props, with fgcli as the producer."""
    set_metadata(proto, info)
    proto.producer_name = "fgcli"
    proto.producer_version = __version__
    proto.doc_string = (f"fgcli {info.method} on {info.backbone}, {len(info.classes)} classes, {info.precision}: "
                        "input 'images' N x 3 x H x W normalised; outputs 'logits', 'probs'.")


def export_loaded(model: Any, info: ModelInfo, out: str | Path, *, img_size: int, dynamic_batch: bool = True,
                  exporter: str = DEFAULT_EXPORTER, opset: int | None = None, temperature: float = 1.0,
                  tta: str | None = None) -> Any:
    """Export a built Method to `out` with `info` as metadata; returns the checked fp32 ModelProto.
    `temperature` / `tta`: see `export_graph`."""
    exported = export_graph(model, img_size, dynamic_batch=dynamic_batch, exporter=exporter, opset=opset,
                            temperature=temperature, tta=tta)
    proto = exported.proto
    info.extra.update(exporter=exported.exporter, opset=str(exported.opset), dynamic_batch=str(dynamic_batch).lower())
    stamp(proto, info)
    check_graph(proto)
    save_model(proto, out)
    return proto


def write_fp32(job: ExportJob, out: Path) -> None:
    """The fp32 writer: the torch model's fused prediction as one graph (`job.proto` afterwards)."""
    opts = job.options
    job.proto = export_loaded(job.model, job.info, out, img_size=job.img_size, dynamic_batch=opts.dynamic_batch,
                              exporter=opts.exporter or DEFAULT_EXPORTER, opset=opts.opset,
                              temperature=job.temperature, tta=job.tta)
    job.say(f"wrote {job.name_of(out)} ({out.stat().st_size / 1e6:.1f} MB, opset {job.info.extra['opset']}); "
            "onnx.checker passed")


def write_fp16(job: ExportJob, out: Path) -> None:
    """The fp16 writer: the fp32 graph with its precision-sensitive parts kept in fp32 (`fgcli.formats.onnx.fp16`)."""
    from fgcli.formats.onnx.fp16 import convert_fp16

    half = convert_fp16(job.proto)
    stamp(half, dataclasses.replace(job.info, precision="fp16", extra=dict(job.info.extra)))
    check_graph(half, "the fp16 graph")
    size = save_model(half, out)
    job.say(f"wrote {job.name_of(out)} ({size / 1e6:.1f} MB)")


def read_info(path: Path) -> ModelInfo:
    """The ModelInfo in an `.onnx` file's metadata, read without starting a session."""
    import onnx

    from fgcli.modelinfo import get_metadata

    try:
        proto = onnx.load(str(path), load_external_data=False)
        if not proto.graph.node:  # an empty file parses as an empty model
            raise ValueError("no graph")
    except Exception as e:
        raise UserError(f"cannot read {path} as an ONNX model ({type(e).__name__}); the file may be truncated or "
                        "corrupt. Re-export it with `fgcli export CHECKPOINT --format onnx`.") from e
    return ModelInfo.from_props(get_metadata(proto), source=str(path))
