"""The OpenVINO IR format (`.xml` + `.bin`): written by OpenVINO's own converter from the fp32 ONNX graph
(`openvino.convert_model`, then `openvino.save_model` with the weights kept in fp32), fgcli's metadata carried in
the IR's rt_info under `fgcli`, and run by OpenVINO's own runtime (`openvino.Core`) on the CPU (`ir`).

OpenVINO's runtime needs no onnxruntime plugin, so the IR runs on every x86 CPU OpenVINO supports, AMD ones
included, where onnxruntime's OpenVINO plugin lists no device. `--precision bf16` sets OpenVINO's inference
precision (on CPUs with AVX-512 BF16 / AMX; elsewhere a warning and fp32); `--threads` its CPU threads.
Importing the package is light: the entry imports `ir` (numpy, OpenVINO) when it runs.
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
    from fgcli.formats.openvino.ir import OpenVinoPredictor

    return OpenVinoPredictor(path, threads=options.threads, calibration=options.calibration, tta=options.tta,
                             precision=options.precision)


def _read_info(path: Path) -> ModelInfo:
    from fgcli.formats.openvino.ir import read_info

    return read_info(path)


def _write(job: ExportJob, out: Path) -> Any:
    from fgcli.formats.openvino.ir import write_ir

    return write_ir(job, out)


register_format(ModelFormat(
    name="openvino", title="OpenVINO IR", family="openvino", precision="fp32", suffixes=(".xml",),
    companions=(".bin",), runtime="OpenVINO", load=_load, read_info=_read_info, write=_write, source="onnx",
    modules=("openvino",), extra="openvino", options=frozenset({"precision"}), cpu_only=True))
