"""`fgcli export --onnx`: checkpoint -> fp32 ONNX file with metadata -> checker -> parity check against torch,
plus optional fp16 and int8 variants (each verified, int8 also judged on the validation split and timed)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgcli import __version__
from fgcli.config import to_dict
from fgcli.console import log
from fgcli.errors import UserError
from fgcli.export.onnx_export import DEFAULT_EXPORTER, check_graph, export_graph, save_model
from fgcli.export.verify import Parity, check, compare
from fgcli.modelinfo import ModelInfo, Preprocess, set_metadata, sha256_file


@dataclass
class ExportOptions:
    """Everything `fgcli export` can be asked for (None = the checkpoint's / exporter's default)."""

    out: Path | None = None  # the fp32 file; variants go beside it as <stem>.fp16.onnx / <stem>.int8.onnx
    opset: int | None = None
    img_size: int | None = None
    dynamic_batch: bool = True
    fp16: bool = False
    int8: bool = False
    verify: bool = True
    use_ema: bool = True
    exporter: str = DEFAULT_EXPORTER
    providers: list[str] | None = None
    device: str = "cpu"  # where onnxruntime verifies (cpu keeps the fp32 tolerance meaningful)
    threads: int | None = None
    verify_images: int = 16
    calib_images: int = 128
    calib_method: str = "minmax"
    int8_eval_images: int | None = None  # None = the whole validation split
    bench_batches: tuple[int, ...] = (1, 8)
    bench_iters: int = 10


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
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (fp32, int8) median ms

    @property
    def top1_change(self) -> float | None:
        return None if self.top1_fp32 is None or self.top1_int8 is None else self.top1_int8 - self.top1_fp32

    def speedup(self, batch: int) -> float:
        fp32, int8 = self.latency_ms[batch]
        return fp32 / int8


@dataclass
class ExportResult:
    """The files written and what was checked."""

    info: ModelInfo
    files: dict[str, Path]  # precision -> path
    sizes: dict[str, int]
    parity: dict[str, Parity] = field(default_factory=dict)
    int8: Int8Report | None = None
    provider: str = ""
    seconds: float = 0.0


def variant_path(fp32_path: Path, precision: str) -> Path:
    """best.onnx -> best.fp16.onnx / best.int8.onnx."""
    return fp32_path.with_name(f"{fp32_path.stem}.{precision}.onnx")


def export_loaded(model: Any, info: ModelInfo, out: str | Path, *, img_size: int, dynamic_batch: bool = True,
                  exporter: str = DEFAULT_EXPORTER, opset: int | None = None) -> Any:
    """Export a built Method to `out` with `info` as metadata; returns the checked fp32 ModelProto."""
    exported = export_graph(model, img_size, dynamic_batch=dynamic_batch, exporter=exporter, opset=opset)
    proto = exported.proto
    info.extra.update(exporter=exported.exporter, opset=str(exported.opset), dynamic_batch=str(dynamic_batch).lower())
    _stamp(proto, info)
    check_graph(proto)
    save_model(proto, out)
    return proto


def _stamp(proto: Any, info: ModelInfo) -> None:
    set_metadata(proto, info)
    proto.producer_name = "fgcli"
    proto.producer_version = __version__
    proto.doc_string = (f"fgcli {info.method} on {info.backbone}, {len(info.classes)} classes, {info.precision}: "
                        "input 'images' N x 3 x H x W normalised; outputs 'logits', 'probs'.")


def scaled_preprocess(pre: Preprocess, img_size: int) -> Preprocess:
    """The preprocessing for another input size, keeping the resize / crop ratio."""
    if img_size == pre.img_size:
        return pre
    resize = max(img_size, round(pre.resize * img_size / pre.img_size))
    return dataclasses.replace(pre, img_size=img_size, resize=resize)


def export_checkpoint(checkpoint: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export a checkpoint's fused model to ONNX (see ExportOptions), verify it, and write the variants.

    All or nothing: every file is written and checked under a hidden temp name beside its final one and renamed
    into place only when the whole export succeeded; an error or Ctrl-C leaves no new file and keeps older ones.
    """
    staged: dict[Path, Path] = {}

    def stage(final: Path) -> Path:
        if final not in staged:
            staged[final] = final.with_name(f".{final.stem}.partial-{os.getpid()}.onnx")
        return staged[final]

    try:
        result = _export_checkpoint(checkpoint, options or ExportOptions(), stage)
        for final, temp in staged.items():
            os.replace(temp, final)
        return result
    finally:
        for temp in staged.values():
            temp.unlink(missing_ok=True)


def _export_checkpoint(checkpoint: str | Path, opts: ExportOptions, stage: Any) -> ExportResult:
    import torch

    from fgcli.engine.checkpoint import build_model_from_checkpoint, load_checkpoint

    t0 = time.perf_counter()
    path = Path(checkpoint)
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path} is already an ONNX file; `fgcli export` takes the training checkpoint (.pt).")
    ckpt = load_checkpoint(path)
    model, classes, pre, cfg = build_model_from_checkpoint(ckpt, use_ema=opts.use_ema, device="cpu")
    size = _input_size(model, pre, opts.img_size)
    pre = scaled_preprocess(pre, size)
    weights = "ema" if opts.use_ema and ckpt.get("ema") else "model"
    info = ModelInfo.from_checkpoint(ckpt, classes=classes, preprocess=pre, source_sha256=sha256_file(path),
                                     extra={"source_checkpoint": path.name, "weights": weights,
                                            "source_checkpoint_fgcli_version": str(ckpt.get("fgcli_version", "")),
                                            # the run's data section: `fgcli eval MODEL.onnx` carves the same splits
                                            "data_config": json.dumps(to_dict(cfg.data))})
    info.fgcli_version = __version__
    fp32_path = Path(opts.out) if opts.out is not None else path.with_suffix(".onnx")
    if fp32_path.suffix.lower() != ".onnx":
        raise UserError(f"--out {fp32_path} must end in .onnx.")
    log.info(f"exporting {info.method} / {info.backbone} ({weights} weights, {len(classes)} classes) at "
             f"{size}x{size}, {'dynamic' if opts.dynamic_batch else 'static'} batch, exporter: {opts.exporter}")
    proto = export_loaded(model, info, stage(fp32_path), img_size=size, dynamic_batch=opts.dynamic_batch,
                          exporter=opts.exporter, opset=opts.opset)
    result = ExportResult(info=info, files={"fp32": fp32_path}, sizes={"fp32": stage(fp32_path).stat().st_size})
    log.info(f"wrote {fp32_path} ({result.sizes['fp32'] / 1e6:.1f} MB, opset {info.extra['opset']}); "
             "onnx.checker passed")

    dataset = None
    if opts.verify or opts.int8:
        from fgcli.export.rundata import run_dataset

        dataset = run_dataset(cfg)
    samples = None
    if opts.verify:
        from fgcli.export.rundata import load_batches

        samples = load_batches(dataset, ("val", "test"), pre, opts.verify_images, where=cfg.data.path)

    def torch_probs(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model.predict(torch.from_numpy(x)).float(), dim=1).numpy()

    fp32_pred = _session(stage(fp32_path), opts)
    result.provider = fp32_pred.provider
    log.info(f"onnxruntime loads {fp32_path.name} on {fp32_pred.provider}")
    if samples is not None:
        result.parity["fp32"] = _verify(torch_probs, fp32_pred, samples, "fp32", fp32_path)

    if opts.fp16:
        from fgcli.export.fp16 import convert_fp16

        fp16_path = variant_path(fp32_path, "fp16")
        proto16 = convert_fp16(proto)
        _stamp(proto16, dataclasses.replace(info, precision="fp16", extra=dict(info.extra)))
        check_graph(proto16, "the fp16 graph")
        result.sizes["fp16"] = save_model(proto16, stage(fp16_path))
        result.files["fp16"] = fp16_path
        log.info(f"wrote {fp16_path} ({result.sizes['fp16'] / 1e6:.1f} MB)")
        if samples is not None:
            result.parity["fp16"] = _verify(torch_probs, _session(stage(fp16_path), opts), samples, "fp16", fp16_path)

    if opts.int8:
        int8_path = variant_path(fp32_path, "int8")
        result.int8 = _export_int8(proto, info, fp32_pred, stage(int8_path), dataset, pre, opts, cfg.data.path,
                                   shown=int8_path)
        result.files["int8"] = int8_path
        result.sizes["int8"] = stage(int8_path).stat().st_size
    result.seconds = time.perf_counter() - t0
    return result


def _input_size(model: Any, pre: Preprocess, requested: int | None) -> int:
    fixed = getattr(model, "input_size", None)
    size = requested or pre.img_size
    if fixed is not None and size != fixed:
        raise UserError(f"--img-size {size}: this model only accepts {fixed}x{fixed} inputs (fixed-size layers). "
                        f"Use --img-size {fixed} or leave it out.")
    if size < 8:
        raise UserError(f"--img-size {size} is too small; use at least 32.")
    return int(size)


def _session(path: Path, opts: ExportOptions) -> Any:
    from fgcli.inference import OnnxPredictor

    return OnnxPredictor(path, providers=opts.providers, device=opts.device, threads=opts.threads)


def _verify(torch_probs: Any, pred: Any, samples: Any, precision: str, path: Path) -> Parity:
    parity = compare(torch_probs, lambda x: pred(x)[1], samples.stacked(), samples.source)
    log.info(f"verify {precision}: {parity.line()}")
    check(parity, precision, str(path))
    return parity


def _export_int8(proto: Any, info: ModelInfo, fp32_pred: Any, int8_path: Path, dataset: Any, pre: Preprocess,
                 opts: ExportOptions, where: str, shown: Path | None = None) -> Int8Report:
    from fgcli.export.quantize import quantize_int8
    from fgcli.export.rundata import first_split, iter_split, load_batches
    from fgcli.timing import bench_predictor

    calib = None
    if dataset is not None and first_split(dataset, ("train",)):
        calib = load_batches(dataset, ("train",), pre, opts.calib_images, where=where)
        log.info(f"int8: calibrating on {calib.count} {calib.source} ({opts.calib_method})")
    else:
        log.warning("int8: no training images to calibrate on (the run's data is not reachable); using dynamic "
                    "quantization (MatMul / Gemm weights only), which speeds up CNNs little")
    quant = quantize_int8(proto, calib.images if calib else None, calib.source if calib else "",
                          method=opts.calib_method)
    extra = dict(info.extra, quantization=quant.mode, calibration=quant.calibration,
                 quantized_layers=f"{quant.quantized_layers}/{quant.weight_layers}")
    _stamp(quant.model, dataclasses.replace(info, precision="int8", extra=extra))
    check_graph(quant.model, "the int8 graph")
    save_model(quant.model, int8_path)
    log.info(f"wrote {shown or int8_path} ({int8_path.stat().st_size / 1e6:.1f} MB, {quant.mode}, "
             f"{quant.quantized_layers}/{quant.weight_layers} weight layers in int8)")
    int8_pred = _session(int8_path, opts)

    split = first_split(dataset, ("val", "test")) if dataset is not None else None
    hits32 = hits8 = agree = n = 0
    labelled = split is not None
    if labelled:
        batches: Any = iter_split(dataset, split, pre, batch_size=16, limit=opts.int8_eval_images)
        source = f"{split} split of {where}"
    else:
        random = load_batches(None, (), pre, opts.verify_images)
        batches = ((x, None) for x in random.images)
        source = random.source
    log.info(f"int8: comparing with fp32 on the {source}")
    for x, y in batches:
        p32 = fp32_pred(x)[0].argmax(1)
        p8 = int8_pred(x)[0].argmax(1)
        agree += int((p32 == p8).sum())
        n += len(x)
        if y is not None:
            hits32 += int((p32 == y).sum())
            hits8 += int((p8 == y).sum())
    report = Int8Report(mode=quant.mode, calibration=quant.calibration, quantized_layers=quant.quantized_layers,
                        weight_layers=quant.weight_layers, eval_source=source, num_images=n,
                        top1_fp32=100.0 * hits32 / n if labelled and n else None,
                        top1_int8=100.0 * hits8 / n if labelled and n else None,
                        agreement=agree / max(n, 1))
    threads = int(opts.threads or _default_threads())
    batches_to_time: Sequence[int] = opts.bench_batches if fp32_pred.fixed_batch is None else (fp32_pred.fixed_batch,)
    fp32_rows = bench_predictor(fp32_pred, batches_to_time, pre.img_size, threads, warmup=2, iters=opts.bench_iters)
    int8_rows = bench_predictor(int8_pred, batches_to_time, pre.img_size, threads, warmup=2, iters=opts.bench_iters)
    report.latency_ms = {a.batch: (a.p50_ms, b.p50_ms) for a, b in zip(fp32_rows, int8_rows, strict=True)}
    change = report.top1_change
    log.info("int8: " + (f"top-1 {report.top1_fp32:.2f}% -> {report.top1_int8:.2f}% ({change:+.2f} points), "
                         if change is not None else "")
             + f"agreement with fp32 {100 * report.agreement:.2f}% on {n} images; speed-up "
             + ", ".join(f"{report.speedup(b):.2f}x at batch {b}" for b in report.latency_ms))
    if change is not None and change < -1.0:
        log.warning(f"int8 loses {-change:.2f} top-1 points on the {source}; prefer the fp32 file {info.method}")
    return report


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()
