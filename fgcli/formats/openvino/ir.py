"""The OpenVINO IR's writer (OpenVINO's converter from the fp32 ONNX graph), metadata reader and predictor
(OpenVINO's own runtime on the CPU); see the package docstring."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgcli.errors import UserError
from fgcli.inference import OPENVINO_HINTS, ExportedPredictor, effective_precision

if TYPE_CHECKING:
    from fgcli.formats import ExportJob
    from fgcli.modelinfo import ModelInfo

#: the rt_info section that holds fgcli's metadata (the ONNX file's metadata_props, key by key)
RT_SECTION = "fgcli"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def write_ir(job: ExportJob, out: Path) -> None:
    """Convert the fp32 ONNX file written before it into an IR at `out` (and its `.bin` beside it)."""
    import openvino as ov

    source = job.written["onnx"]
    try:
        model = ov.convert_model(str(source))
    except Exception as e:  # an op the converter does not take
        raise UserError(f"OpenVINO cannot convert the ONNX graph to its IR ({_first_line(e)}); export --format onnx "
                        "and run it with onnxruntime, or rerun with --debug for details.") from e
    for key, value in job.info.to_props().items():
        model.set_rt_info(value, [RT_SECTION, key])
    ov.save_model(model, str(out), compress_to_fp16=False)
    size = sum(p.stat().st_size for p in (out, out.with_suffix(".bin")))
    job.say(f"wrote {job.name_of(out)} + .bin ({size / 1e6:.1f} MB, OpenVINO {ov.__version__} IR)")


@functools.cache
def _core() -> Any:
    """The process's one OpenVINO Core. Not one per model: OpenVINO's CPU plugin swaps the main thread's signal
    stack for its own in each Core and puts back the one it found when that Core is freed, so two Cores freed in
    the order they were made leave a freed stack installed, and the next signal (e.g. torch's SIGCHLD handler
    when a subprocess ends) kills the process with SIGSEGV (tests/test_openvino.py reproduces it)."""
    import openvino as ov

    return ov.Core()


def _read(path: Path) -> tuple[Any, Any]:
    """(OpenVINO Core, the IR's model), with one line for a file OpenVINO cannot read."""
    core = _core()
    try:
        return core, core.read_model(str(path))
    except Exception as e:
        raise UserError(f"OpenVINO cannot read {path} ({_first_line(e)}); the .xml / .bin pair may be truncated or "
                        "corrupt. Export it again with `fgcli export CHECKPOINT --format openvino`.") from e


def _props(model: Any) -> dict[str, str]:
    """fgcli's metadata from the IR's rt_info (empty when it has none)."""
    if not model.has_rt_info([RT_SECTION]):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info()[RT_SECTION].items()}


def read_info(path: Path) -> ModelInfo:
    """The ModelInfo in an IR's rt_info, read without compiling it."""
    from fgcli.modelinfo import ModelInfo

    _, model = _read(path)
    return ModelInfo.from_props(_props(model), source=str(path))


class OpenVinoPredictor(ExportedPredictor):
    """An OpenVINO IR on OpenVINO's own runtime (the CPU device); classes and preprocessing from its rt_info."""

    backend = "openvino"
    format = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, calibration: bool = True,
                 tta: str | None = None, precision: str | None = None) -> None:
        """`calibration` / `tta`: see `ExportedPredictor._read_metadata`. `precision` fp32 / bf16: OpenVINO's
        inference precision (bf16 falls back to fp32, with a warning, on CPUs without AVX-512 BF16 / AMX)."""
        self.path = Path(path)
        self.precision = effective_precision(precision, openvino=True)
        core, model = _read(self.path)
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[self.precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise UserError(f"OpenVINO cannot compile {self.path} for the CPU ({_first_line(e)}); rerun with --debug "
                            "for details.") from e
        batch = model.inputs[0].get_partial_shape()[0] if model.inputs else None
        self._read_metadata(_props(model), [i.get_any_name() for i in model.inputs],
                            batch.get_length() if batch is not None and batch.is_static else None,
                            [o.get_any_name() for o in model.outputs], calibration, tta)
        self.request = self.compiled.create_infer_request()

    @property
    def device(self) -> str:
        return f"openvino CPU ({self.precision})"

    def _run_graph(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({"images": images})
        # the request reuses its output buffers: copy before the next view runs
        return (np.array(out[self.compiled.output("logits")], copy=True),
                np.array(out[self.compiled.output("probs")], copy=True))
