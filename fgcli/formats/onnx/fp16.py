"""fp32 -> fp16 ONNX conversion that keeps precision-sensitive parts of the graph in fp32.

Uses the float16 converter shipped with onnxruntime (`onnxruntime.transformers.float16`, the maintained copy
of onnxconverter-common's `convert_float_to_float16`). Inputs and outputs stay float32. Kept in fp32:
  - ops whose results must match the fp32 graph exactly or that need range: TopK, ArgMax, RoiAlign,
    Softmax / LogSoftmax / ReduceLogSumExp / Log / Exp, ReduceMin / ReduceMax / ReduceSum / ReduceL2;
  - the "fp32 islands" of `fgcli.formats.onnx.graph` (head fusion and final classifiers, HERBS' token ranking,
    MGE-CNN's CAM -> box math); HERBS' log of mean softmax alone would give -inf logits in fp16.
"""

from __future__ import annotations

from typing import Any

from fgcli.errors import UserError
from fgcli.formats.onnx.graph import drop_duplicate_nodes, fp32_island_nodes, topological_sort

FP32_OPS = ("TopK", "ArgMax", "ArgMin", "RoiAlign", "Softmax", "LogSoftmax", "ReduceLogSumExp", "Log", "Exp",
            "ReduceMin", "ReduceMax", "ReduceSum", "ReduceL2", "NonMaxSuppression", "Range", "CumSum")


def convert_fp16(model: Any) -> Any:
    """An fp16 copy of an fp32 `onnx.ModelProto` (float32 inputs/outputs, sensitive parts in fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the converter edits its argument
    try:
        half = convert_float_to_float16(copy, keep_io_types=True,
                                        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)),
                                        node_block_list=fp32_island_nodes(copy))
    except Exception as e:
        raise UserError(f"fp16 conversion failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); this "
                        "graph cannot be converted. Export without --fp16 (fp32) or with --int8.") from e
    drop_duplicate_nodes(half)
    topological_sort(half)
    # the converter's value_info hints can contradict its own casts; they are optional, onnxruntime infers types
    del half.graph.value_info[:]
    return half
