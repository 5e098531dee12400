"""The ONNX int8 file: quantize the fp32 graph (`fgcli.formats.onnx.quantize`), judge it against the fp32 file
on the run's validation split (never test), keep more of the first weight layers in fp32 while it loses more than
`--int8-max-drop` top-1 points, and time both files."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgcli.console import log, track
from fgcli.errors import UserError
from fgcli.formats.onnx.torch_to_onnx import check_graph, save_model
from fgcli.formats.onnx.writers import stamp
from fgcli.modelinfo import ModelInfo, Preprocess
from fgcli.parity import compare_probs

if TYPE_CHECKING:
    from fgcli.formats import ExportJob
    from fgcli.options import ExportOptions

CALIB_METHODS = ("minmax", "percentile", "entropy")


@dataclass
class Int8Report:
    """How the int8 file compares with the fp32 one."""

    mode: str  # static | dynamic
    calibration: str
    quantized_layers: int
    weight_layers: int
    eval_source: str
    num_images: int
    top1_fp32: float | None  # percent, when labels are available
    top1_int8: float | None
    agreement: float  # top-1 agreement int8 vs fp32, fraction
    fp32_first: int = 0  # the first weight layers (from the input) kept in fp32, chosen on the validation split
    weight_bits: int = 8  # 7: reduce_range (CPUs without VNNI)
    tried: list[tuple[int, float]] = field(default_factory=list)  # (fp32_first, top-1 change) of each try
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (fp32, int8) median ms

    @property
    def top1_change(self) -> float | None:
        return None if self.top1_fp32 is None or self.top1_int8 is None else self.top1_int8 - self.top1_fp32

    def speedup(self, batch: int) -> float:
        fp32, int8 = self.latency_ms[batch]
        return fp32 / int8

    def line(self) -> str:
        """The int8 file's check, in one line (the export summary)."""
        top1 = (f"top-1 {self.top1_fp32:.2f}% -> {self.top1_int8:.2f}% ({self.top1_change:+.2f}), "
                if self.top1_change is not None else "")
        speed = ", ".join(f"{self.speedup(b):.2f}x at batch {b}" for b in self.latency_ms)
        n = self.fp32_first
        kept = f"first {n} weight layer{'s' if n > 1 else ''} fp32; " if n else ""
        bits = "7-bit weights; " if self.weight_bits == 7 else ""
        return (f"{self.mode}; {bits}{kept}{top1}agreement {100 * self.agreement:.1f}% on {self.num_images} images "
                f"({self.eval_source}); vs fp32: {speed}")


def write_int8(job: ExportJob, out: Path) -> Int8Report:
    """The int8 writer: from the fp32 graph written before it (`job.proto`), judged against that file."""
    fp32_pred = job.cache.get("onnx-predictor") or _session(job.written["onnx"], job.options)
    job.cache["onnx-predictor"] = fp32_pred
    return _export_int8(job.proto, job.info, fp32_pred, out, job.dataset, job.info.preprocess, job.options,
                        job.data_where, shown=job.name_of(out))


def check_calib_method(opts: ExportOptions) -> None:
    """--calib-method names one of CALIB_METHODS; --int8-weights 8 or 7."""
    if opts.calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method {opts.calib_method}: choose one of {', '.join(CALIB_METHODS)}.")
    if str(opts.int8_weights) not in ("8", "7"):
        raise UserError(f"--int8-weights {opts.int8_weights}: choose 8 or 7.")


def saturation_note() -> str | None:
    """One line when this CPU's int8 kernels can saturate with 8-bit weights (no VNNI / AMX-INT8), else None."""
    from fgcli.cpu import cpu_info

    info = cpu_info()
    if info.int8_dot_product:
        return None
    return (f"int8: this CPU ({info.isa_class}, no VNNI / AMX-INT8) adds two u8 x s8 products in 16 bits, which "
            "8-bit weights can saturate: the int8 file is judged on these kernels, and a file judged on a VNNI CPU "
            "may lose more accuracy here")


def _session(path: Path, opts: ExportOptions) -> Any:
    from fgcli.inference import OnnxPredictor

    return OnnxPredictor(path, providers=opts.providers, device=opts.device, threads=opts.threads)


def check_int8_data(dataset: Any | None, opts: ExportOptions, where: str) -> None:
    """The int8 search (`int8_max_drop`) chooses on the run's val split, never on test: refuse it when the
    run's data is here but has no val split (checked before anything is written)."""
    if dataset is None or opts.int8_max_drop is None or dataset.splits.get("val"):
        return
    raise UserError(f"--int8: the run's data ({where}) has no val split, and --int8-max-drop chooses on val images "
                    "only, never on test; a val split carved from train now would hold training images. Train with "
                    "one (`fgcli prepare-data --val-fraction 0.1`, or --set data.val_fraction=0.1) and export that "
                    "run.")


def _export_int8(proto: Any, info: ModelInfo, fp32_pred: Any, int8_path: Path, dataset: Any, pre: Preprocess,
                 opts: ExportOptions, where: str, shown: Path | None = None) -> Int8Report:
    calib = _calibration_batches(dataset, pre, opts, where)
    note = saturation_note()
    if note:
        log.info(note)
    scored: dict[str, Any] = {}
    report, keep, tried = None, 0, []
    for keep in _keep_steps(0):
        quant = _quantize(proto, info, int8_path, calib, opts, shown, keep)
        report = _judge_int8(fp32_pred, _session(int8_path, opts), dataset, pre, opts, where, quant, scored)
        change = report.top1_change
        tried.append((keep, change))
        if (change is None or opts.int8_max_drop is None or change >= -opts.int8_max_drop
                or keep >= quant.weight_layers // 2):
            break
        log.info(f"int8: {-change:.2f} top-1 points lost on the {report.eval_source} (more than "
                 f"{opts.int8_max_drop:g}); trying again with more of the first weight layers in fp32")
    assert report is not None
    best_keep, _ = max(tried, key=lambda t: (t[1], -t[0])) if tried[-1][1] is not None else tried[-1]
    if best_keep != keep:  # no try within the limit: the best one (fewest fp32 layers among equals)
        quant = _quantize(proto, info, int8_path, calib, opts, shown, best_keep)
        report = _judge_int8(fp32_pred, _session(int8_path, opts), dataset, pre, opts, where, quant, scored)
    report.tried = tried
    int8_pred = _session(int8_path, opts)
    report.latency_ms = _time_pair(fp32_pred, int8_pred, pre, opts)
    change = report.top1_change
    log.info("int8: " + (f"top-1 {report.top1_fp32:.2f}% -> {report.top1_int8:.2f}% ({change:+.2f} points), "
                         if change is not None else "")
             + f"agreement with fp32 {100 * report.agreement:.2f}% on {report.num_images} images"
             + (f", first {report.fp32_first} weight layers in fp32" if report.fp32_first else "")
             + "; speed-up " + ", ".join(f"{report.speedup(b):.2f}x at batch {b}" for b in report.latency_ms))
    if change is not None and opts.int8_max_drop is not None and change < -opts.int8_max_drop:
        log.warning(f"int8 loses {-change:.2f} top-1 points on the {report.eval_source}; prefer the fp32 file "
                    f"{info.method}")
    return report


def _keep_steps(start: int) -> Any:
    """How many of the first weight layers to keep in fp32 on each try: 0, 1, 2, 4, 8, ..."""
    yield start
    step = 1
    while True:
        yield step
        step *= 2


def _calibration_batches(dataset: Any, pre: Preprocess, opts: ExportOptions, where: str) -> Any:
    """`calib_images` images of the run's train split only (evenly spread over it), or None (no data)."""
    from fgcli.data.rundata import first_split, load_batches

    if dataset is not None and first_split(dataset, ("train",)):
        calib = load_batches(dataset, ("train",), pre, opts.calib_images, where=where)
        log.info(f"int8: calibrating on {calib.count} {calib.source} ({opts.calib_method})")
        return calib
    log.warning("int8: no training images to calibrate on (the run's data is not reachable); using dynamic "
                "quantization (MatMul / Gemm weights only), which speeds up CNNs little")
    return None


def _quantize(proto: Any, info: ModelInfo, int8_path: Path, calib: Any, opts: ExportOptions, shown: Path | None,
              keep_first: int = 0) -> Any:
    """Quantize (static, calibrated on `calib`, else dynamic) and write the int8 file."""
    from fgcli.formats.onnx.quantize import quantize_int8

    quant = quantize_int8(proto, calib.images if calib else None, calib.source if calib else "",
                          method=opts.calib_method, keep_first=keep_first, weight_bits=int(opts.int8_weights))
    # int8_calibration*: the activation ranges' images and method (`calibration` is the temperature fit's)
    extra = dict(info.extra, quantization=quant.mode, int8_calibration=quant.calibration,
                 int8_calibration_method=opts.calib_method if calib else "",
                 quantized_layers=f"{quant.quantized_layers}/{quant.weight_layers}",
                 fp32_first_layers=str(quant.fp32_first), int8_weight_bits=str(quant.weight_bits))
    stamp(quant.model, dataclasses.replace(info, precision="int8", extra=extra))
    check_graph(quant.model, "the int8 graph")
    save_model(quant.model, int8_path)
    log.info(f"wrote {shown or int8_path} ({int8_path.stat().st_size / 1e6:.1f} MB, {quant.mode}, "
             f"{quant.quantized_layers}/{quant.weight_layers} weight layers in int8"
             + (f", the first {quant.fp32_first} in fp32" if quant.fp32_first else "") + ")")
    return quant


class _Recorded:
    """A predictor that also keeps its probabilities (for the int8 / fp32 parity)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.probs = predictor, []

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.predictor(images)
        self.probs.append(probs)
        return logits, probs


def _judge_int8(fp32_pred: Any, int8_pred: Any, dataset: Any, pre: Preprocess, opts: ExportOptions, where: str,
                quant: Any, scored: dict[str, Any] | None = None) -> Int8Report:
    """Top-1 of both files on the run's val split with `evaluate()`, and their agreement; random inputs
    (agreement only) when the data is not reachable or has no val split (never the test split: the search
    chooses on this). `scored` keeps the fp32 file's score between calls."""
    from fgcli.data.rundata import first_split, iter_split, load_batches
    from fgcli.engine.evaluate import evaluate

    split = first_split(dataset, ("val",)) if dataset is not None else None
    if dataset is not None and split is None:
        log.info("int8: the run's data has no val split; comparing with fp32 on random inputs only (the test "
                 "split is never used)")
    if split is not None:
        def batches() -> Any:
            return iter_split(dataset, split, pre, batch_size=16, limit=opts.int8_eval_images)
        source = f"{split} split of {where}"
        count = len(dataset.split(split))
        total = -(-min(opts.int8_eval_images or count, count) // 16)
    else:
        random = load_batches(None, (), pre, opts.verify_images)

        def batches() -> Any:
            return ((x, np.zeros(len(x), dtype=np.int64)) for x in random.images)
        source, total = random.source, len(random.images)
    log.info(f"int8: comparing with fp32 on the {source}")
    scored = {} if scored is None else scored
    num_classes = len(fp32_pred.info.classes)
    if "fp32" not in scored:
        rec32 = _Recorded(fp32_pred)
        scored["fp32"] = (evaluate(rec32, track(batches(), "int8: scoring the fp32 file", total),
                                   num_classes).result(), rec32)
    res32, rec32 = scored["fp32"]
    rec8 = _Recorded(int8_pred)
    res8 = evaluate(rec8, track(batches(), "int8: scoring the int8 file", total), num_classes).result()
    n = res32.num_samples
    parity = compare_probs(np.concatenate(rec32.probs), np.concatenate(rec8.probs), source) if n else None
    labelled = split is not None and n > 0
    return Int8Report(mode=quant.mode, calibration=quant.calibration, quantized_layers=quant.quantized_layers,
                      weight_layers=quant.weight_layers, eval_source=source, num_images=n,
                      top1_fp32=res32.top1 if labelled else None, top1_int8=res8.top1 if labelled else None,
                      agreement=parity.top1_agreement if parity is not None else 0.0, fp32_first=quant.fp32_first,
                      weight_bits=quant.weight_bits)


def _time_pair(fp32_pred: Any, int8_pred: Any, pre: Preprocess, opts: ExportOptions) -> dict[int, tuple[float, float]]:
    """Median latency (ms) of the fp32 and the int8 file per batch size, on the same inputs and threads."""
    from fgcli.timing import bench_predictor

    threads = int(opts.threads or _default_threads())
    batches: Sequence[int] = opts.bench_batches if fp32_pred.fixed_batch is None else (fp32_pred.fixed_batch,)
    fp32_rows = bench_predictor(fp32_pred, batches, pre.img_size, threads, warmup=2, iters=opts.bench_iters)
    int8_rows = bench_predictor(int8_pred, batches, pre.img_size, threads, warmup=2, iters=opts.bench_iters)
    return {a.batch: (a.p50_ms, b.p50_ms) for a, b in zip(fp32_rows, int8_rows, strict=True)}


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()
