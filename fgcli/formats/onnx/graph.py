"""Graph analysis shared by fp16 conversion and int8 quantization: which nodes must stay in fp32.

"fp32 islands": every node feeding a graph output, a TopK / ArgMax input or RoiAlign's boxes, back to and
including the first weight layer (Conv / Gemm / MatMul with an initializer), never crossing a spatially
pooled (rank-4) feature map. For the three methods that is the fusion of the heads and the final classifiers
(HERBS' log of mean softmax), HERBS' token-ranking heads (reduced precision creates false ties that
reorder the combiner's input), and MGE-CNN's CAM -> box math (its spec wants it in fp32).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

_WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_POOL_OPS = ("ReduceMean", "GlobalAveragePool", "GlobalMaxPool")
_SENSITIVE_INPUTS = {"TopK": (0,), "ArgMax": (0,), "RoiAlign": (1, 2)}


def fp32_island_nodes(model: Any) -> list[str]:
    """Names of the nodes in the fp32 islands (see the module docstring); unnamed nodes get names."""
    name_nodes(model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    ranks = _ranks(model)
    pooled = {name for name, users in consumers.items()
              if ranks.get(name) == 4 and any(u.op_type in _POOL_OPS for u in users)}
    seeds = [o.name for o in graph.output]
    for node in graph.node:
        seeds += [node.input[i] for i in _SENSITIVE_INPUTS.get(node.op_type, ()) if i < len(node.input)]
    keep: set[str] = set()
    stack = list(seeds)
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor in pooled or tensor not in producer:
            continue
        seen.add(tensor)
        node = producer[tensor]
        keep.add(node.name)
        if node.op_type in _WEIGHT_OPS and any(i in initializers for i in node.input[1:]):
            continue  # the first weight layer: it runs in fp32, its input stays fp16
        stack.extend(i for i in node.input if i and i not in initializers)
    return sorted(keep)


def _ranks(model: Any) -> dict[str, int]:
    """Tensor name -> rank, from ONNX shape inference (missing where unknown)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a hint here; without it nothing counts as pooled
        return {}
    graph = inferred.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input, *graph.output)
            if v.type.tensor_type.HasField("shape")}


def name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (block and exclude lists match nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    i = 0
    for node in model.graph.node:
        if not node.name:
            while f"fgcli_node_{i}" in taken:
                i += 1
            node.name = f"fgcli_node_{i}"
            taken.add(node.name)


def topological_sort(model: Any) -> None:
    """Reorder the graph's nodes so that every input is produced before use (converters append casts last)."""
    graph = model.graph
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave the rest in their order
            ordered.extend(rest)
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def drop_duplicate_nodes(model: Any) -> int:
    """Remove nodes identical to an earlier one that writes the same outputs (the fp16 converter inserts the same
    Cast once per consumer); returns how many were dropped. Different nodes writing one name are left alone."""
    first: dict[tuple[str, ...], bytes] = {}
    kept, dropped = [], 0
    for node in model.graph.node:
        key = tuple(node.output)
        body = node.SerializeToString(deterministic=True)
        if key in first and first[key] == body:
            dropped += 1
            continue
        first.setdefault(key, body)
        kept.append(node)
    if dropped:
        copies = [type(n)() for n in kept]
        for dst, src in zip(copies, kept, strict=True):
            dst.CopyFrom(src)
        del model.graph.node[:]
        model.graph.node.extend(copies)
    return dropped


def unshare_initializers(model: Any) -> int:
    """Give every extra consumer of a shared initializer its own copy; returns how many copies were made.

    onnxruntime's quantizers edit weights in place (per-channel scales, Gemm -> MatMul transposes), which
    corrupts the other users of a shared weight, e.g. MGE-CNN's classifier rows gathered for the CAM, or a
    HERBS head applied to both tokens (MatMul) and pooled features (Gemm).
    """
    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            if name not in seen:
                seen.add(name)
                continue
            copies += 1
            clone = type(inits[name])()
            clone.CopyFrom(inits[name])
            clone.name = f"{name}__fgcli_copy{copies}"
            model.graph.initializer.append(clone)
            node.input[i] = clone.name
    return copies


def drop_initializer_value_info(model: Any) -> None:
    """Remove value_info entries describing initializers (the dynamo exporter writes them); onnxruntime's
    quantizer transposes some weights and would then contradict them."""
    inits = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.value_info if v.name not in inits]
    if len(kept) != len(model.graph.value_info):
        copies = [type(v)() for v in kept]
        for dst, src in zip(copies, kept, strict=True):
            dst.CopyFrom(src)
        del model.graph.value_info[:]
        model.graph.value_info.extend(copies)


def finite_infinities(model: Any) -> int:
    """Replace ±inf in float initializers by the largest finite value of their type (same sign); returns how many
    were replaced. For int8 calibration, which cannot compute a range over an infinite tensor: a mask filled with
    -inf (HERBS' margin key, `masked_fill` -> Where) gives the same results with the most negative float,
    since exp() of either is 0 and neither can win a max."""
    import numpy as np
    from onnx import numpy_helper

    count = 0
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            continue
        array = numpy_helper.to_array(tensor)
        if np.isfinite(array).all() or array.dtype.kind != "f":
            continue
        big = np.finfo(array.dtype).max
        fixed = np.where(np.isposinf(array), big, np.where(np.isneginf(array), -big, array)).astype(array.dtype)
        replacement = numpy_helper.from_array(fixed, tensor.name)
        model.graph.initializer[i].CopyFrom(replacement)
        count += int(np.isinf(array).sum())
    return count
