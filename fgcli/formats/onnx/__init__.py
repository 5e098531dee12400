"""The ONNX format, fp32 / fp16 / int8: three registry entries sharing onnxruntime's predictor.

Modules: `torch_to_onnx` (the torch -> ONNX graph export), `writers` (the fp32 and fp16 files, their metadata),
`fp16`, `quantize` and `int8` (the int8 file and its search on the validation split), `graph` (the graph helpers
they share). Importing the package is light: each entry imports its code when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgcli.formats import ExportJob, ModelFormat, register_format

if TYPE_CHECKING:
    from fgcli.inference import Predictor
    from fgcli.modelinfo import ModelInfo
    from fgcli.options import LoadOptions


def _load(path: Path, options: LoadOptions) -> Predictor:
    from fgcli.inference import OnnxPredictor

    return OnnxPredictor(path, providers=options.providers, device=options.device, threads=options.threads,
                         calibration=options.calibration, tta=options.tta, precision=options.precision)


def _read_info(path: Path) -> ModelInfo:
    from fgcli.formats.onnx.writers import read_info

    return read_info(path)


def _write_fp32(job: ExportJob, out: Path) -> Any:
    from fgcli.formats.onnx.writers import write_fp32

    return write_fp32(job, out)


def _write_fp16(job: ExportJob, out: Path) -> Any:
    from fgcli.formats.onnx.writers import write_fp16

    return write_fp16(job, out)


def _write_int8(job: ExportJob, out: Path) -> Any:
    from fgcli.formats.onnx.int8 import write_int8

    return write_int8(job, out)


def _check_int8(job: ExportJob) -> None:
    from fgcli.formats.onnx.int8 import check_calib_method, check_int8_data

    check_calib_method(job.options)
    check_int8_data(job.dataset, job.options, job.data_where)


_COMMON = dict(family="onnx", runtime="onnxruntime", load=_load, read_info=_read_info, modules=("onnxruntime", "onnx"),
               options=frozenset({"providers", "precision"}))
register_format(ModelFormat(name="onnx", title="ONNX fp32", precision="fp32", suffixes=(".onnx",), write=_write_fp32,
                            source="torch", **_COMMON))
register_format(ModelFormat(name="onnx-fp16", title="ONNX fp16", precision="fp16", suffixes=(".fp16.onnx",),
                            write=_write_fp16, source="onnx", **_COMMON))
register_format(ModelFormat(name="onnx-int8", title="ONNX int8", precision="int8", suffixes=(".int8.onnx",),
                            write=_write_int8, source="onnx", check=_check_int8, needs_data=True, **_COMMON))
