"""int8 quantization with onnxruntime's tools: static QDQ (per-channel weights, calibrated activations) when
calibration images exist, else dynamic (weights only, MatMul / Gemm).

Static: every op onnxruntime's QDQ quantizer supports is quantized (weight layers, activations such as Clip /
Relu, residual Adds, pooling, reshapes), so that each weight layer sits between a DequantizeLinear and a
QuantizeLinear: onnxruntime's CPU provider then runs it as an integer kernel (QLinearConv / QLinearMatMul) and
OpenVINO as an int8 layer. Quantizing only the weight layers' inputs ("DQ -> Conv" with a float output) runs
the float kernel on rounded values: no faster, and less accurate (EfficientNet-Lite0 on flowers102: -12.8 val
points, against -0.5 with every op quantized, 128 calibration images).

Nodes in the "fp32 islands" of `fgcli.formats.onnx.graph` are excluded: the final classifiers and head fusion
(small, and where quantization error shows directly in the probabilities), HERBS' token-ranking heads (int8
scores make ties and reorder the combiner's rank-position input) and MGE-CNN's CAM -> box path (the crop must
not move). `keep_first` also keeps the first weight layers (from the input) in fp32: quantization error made at
full resolution grows through the whole network, so those are the sensitive ones (the export tries more of them
when int8 loses too much accuracy on the validation split, see `fgcli.tasks.export_model`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from fgcli.console import library_output, log, settings, track
from fgcli.errors import UserError
from fgcli.formats.onnx.graph import (
    drop_initializer_value_info,
    finite_infinities,
    fp32_island_nodes,
    name_nodes,
    topological_sort,
    unshare_initializers,
)

QUANT_OPS = ("Conv", "MatMul", "Gemm")


@dataclass
class QuantResult:
    """What was quantized and how."""

    model: Any  # the quantized onnx.ModelProto
    mode: str  # "static" (QDQ, calibrated) or "dynamic"
    calibration: str = ""  # in words
    quantized_layers: int = 0  # weight layers (Conv / MatMul / Gemm) now computing in int8
    weight_layers: int = 0  # all weight layers of the graph
    excluded_nodes: list[str] = field(default_factory=list)
    fp32_first: int = 0  # the first weight layers (from the input) kept in fp32
    weight_bits: int = 8  # 7: onnxruntime's reduce_range (weights in [-64, 63])


class _Reader(CalibrationDataReader):
    """An onnxruntime CalibrationDataReader over preprocessed batches."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str = "images") -> None:
        self._batches = list(batches)
        self._input = input_name
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self._input: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def tracked(self) -> _Reader:
        """Iterate the batches under a progress bar (onnxruntime's calibration reads them one by one)."""
        self._it = track(self._batches, "int8: calibrating activations")
        return self


def quantize_int8(fp32_model: Any, calibration: list[np.ndarray] | None, calibration_source: str = "",
                  method: str = "percentile", keep_first: int = 0, weight_bits: int = 8) -> QuantResult:
    """Quantize an fp32 `onnx.ModelProto`: static QDQ with `calibration` batches, or dynamic without them;
    `keep_first` weight layers from the input stay fp32 (besides the fp32 islands); `weight_bits` 7 keeps the
    int8 weights in 7 bits (onnxruntime's `reduce_range`), so that CPUs without VNNI, whose kernels add two
    u8 x s8 products in 16 bits, cannot saturate."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if not settings.debug:
        ort.set_default_logger_severity(3)  # the calibration sessions' C++ warnings (errors still show)
    # the quantizer's progress print()s and root-logger warnings go to the log (debug), not the terminal
    with tempfile.TemporaryDirectory(prefix="fgcli-int8-") as tmp, library_output("onnxruntime.quantization"):
        raw, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save(fp32_model, str(raw))
        _pre_process(raw, pre)
        prepared = onnx.load(str(pre))
        unshare_initializers(prepared)
        drop_initializer_value_info(prepared)
        finite_infinities(prepared)  # calibration needs finite ranges (HERBS' -inf mask)
        excluded = sorted(set(fp32_island_nodes(prepared)) | set(first_weight_layers(prepared, keep_first)))
        onnx.save(prepared, str(pre))
        mode = "static" if calibration else "dynamic"
        try:
            if calibration:
                quantize_static(str(pre), str(out), _Reader(calibration).tracked(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=excluded,  # every op type the QDQ quantizer supports
                                calibrate_method=methods[method], reduce_range=weight_bits == 7,
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            else:
                quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                                 weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                                 reduce_range=weight_bits == 7)
        except Exception as e:
            if mode == "dynamic":
                raise UserError(f"int8 quantization failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                                "Use the fp32 file.") from e
            log.warning(f"static int8 quantization failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        "falling back to dynamic quantization")
            return quantize_int8(fp32_model, None, method=method, keep_first=keep_first, weight_bits=weight_bits)
        model = onnx.load(str(out))
    return QuantResult(model=model, mode=mode, calibration=calibration_source if calibration else "",
                       quantized_layers=_count_quantized(model), excluded_nodes=excluded, fp32_first=keep_first,
                       weight_bits=weight_bits,
                       weight_layers=sum(1 for n in prepared.graph.node if n.op_type in QUANT_OPS))


def first_weight_layers(model: Any, count: int) -> list[str]:
    """Names of the first `count` weight layers (Conv / MatMul / Gemm with an initializer weight) in the graph's
    topological order, i.e. from the input."""
    if count <= 0:
        return []
    name_nodes(model)
    topological_sort(model)
    inits = {t.name for t in model.graph.initializer}
    layers = [n.name for n in model.graph.node
              if n.op_type in QUANT_OPS and len(n.input) > 1 and n.input[1] in inits]
    return layers[:count]


def _pre_process(raw: Path, out: Path) -> None:
    """onnxruntime's recommended pre-processing (shape inference, constant / BN folding); symbolic shape
    inference fails on some graphs (HERBS), then ONNX shape inference alone is used."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for symbolic in (True, False):
        try:
            quant_pre_process(str(raw), str(out), skip_symbolic_shape=not symbolic)
            return
        except Exception as e:
            log.debug(f"quant_pre_process (symbolic shapes: {symbolic}) failed: {type(e).__name__}: {e}")
    out.write_bytes(raw.read_bytes())


def _count_quantized(model: Any) -> int:
    """Weight layers fed by dequantized weights (QDQ) or replaced by integer kernels (dynamic)."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    count = 0
    for node in model.graph.node:
        if node.op_type in QUANT_OPS and len(node.input) > 1 and producer.get(node.input[1]) == "DequantizeLinear":
            count += 1
        elif node.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"):
            count += 1
    return count
