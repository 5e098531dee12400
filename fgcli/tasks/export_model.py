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
from fgcli.console import log, track
from fgcli.errors import UserError
from fgcli.formats.onnx.torch_to_onnx import DEFAULT_EXPORTER, check_graph, export_graph, save_model
from fgcli.modelinfo import ModelInfo, Preprocess, set_metadata, sha256_file
from fgcli.parity import Parity, check, compare, compare_probs

CALIB_METHODS = ("minmax", "percentile", "entropy")


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
    calibration: bool = True  # probs divided by the checkpoint's fitted temperature (when it has one)
    tta: str | None = None  # "flip": the graph also runs the mirrored image and averages the probabilities
    providers: list[str] | None = None
    device: str = "cpu"  # where onnxruntime verifies (cpu keeps the fp32 tolerance meaningful)
    threads: int | None = None
    verify_images: int = 16
    calib_images: int = 128
    calib_method: str = "percentile"
    int8_eval_images: int | None = None  # None = the whole validation split
    # int8 losing more than this many top-1 points on the validation split: keep the first weight layers in fp32
    # (1, 2, 4, ... from the input) until it does not; None = quantize once, never search
    int8_max_drop: float | None = 0.5
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
    fp32_first: int = 0  # the first weight layers (from the input) kept in fp32, chosen on the validation split
    tried: list[tuple[int, float]] = field(default_factory=list)  # (fp32_first, top-1 change) of each try
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
                  exporter: str = DEFAULT_EXPORTER, opset: int | None = None, temperature: float = 1.0,
                  tta: str | None = None) -> Any:
    """Export a built Method to `out` with `info` as metadata; returns the checked fp32 ModelProto.
    `temperature` / `tta`: see `export_graph` (and `calibration_metadata` for what the metadata says)."""
    exported = export_graph(model, img_size, dynamic_batch=dynamic_batch, exporter=exporter, opset=opset,
                            temperature=temperature, tta=tta)
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
    t0 = time.perf_counter()
    path = Path(checkpoint)
    if opts.calib_method not in CALIB_METHODS:
        raise UserError(f"--calib-method {opts.calib_method}: choose one of {', '.join(CALIB_METHODS)}.")
    if path.suffix.lower() == ".onnx":
        raise UserError(f"{path} is already an ONNX file; `fgcli export` takes the training checkpoint (.pt).")
    torch_pred, cfg = _load_for_export(path, opts)
    info, pre = torch_pred.info, torch_pred.info.preprocess
    fp32_path = Path(opts.out) if opts.out is not None else path.with_suffix(".onnx")
    if fp32_path.suffix.lower() != ".onnx":
        raise UserError(f"--out {fp32_path} must end in .onnx.")
    dataset = None
    if opts.verify or opts.int8:
        from fgcli.data.select import reachable_run_data

        dataset = reachable_run_data(cfg)
    if opts.int8:
        check_int8_data(dataset, opts, cfg.data.path)
    log.info(f"exporting {info.method} / {info.backbone} ({info.extra['weights']} weights, {len(info.classes)} "
             f"classes) at {pre.img_size}x{pre.img_size}, {'dynamic' if opts.dynamic_batch else 'static'} batch, "
             f"exporter: {opts.exporter}")
    proto = export_loaded(torch_pred.model, info, stage(fp32_path), img_size=pre.img_size,
                          dynamic_batch=opts.dynamic_batch, exporter=opts.exporter, opset=opts.opset,
                          temperature=torch_pred.fused.temperature, tta=torch_pred.tta)
    result = ExportResult(info=info, files={"fp32": fp32_path}, sizes={"fp32": stage(fp32_path).stat().st_size})
    log.info(f"wrote {fp32_path} ({result.sizes['fp32'] / 1e6:.1f} MB, opset {info.extra['opset']}); "
             "onnx.checker passed")

    samples = None
    if opts.verify:
        from fgcli.data.rundata import load_batches

        # a pass / fail check of the numerics: any real images do, and the test split stays untouched
        samples = load_batches(dataset, ("val", "train"), pre, opts.verify_images, where=cfg.data.path)

    fp32_pred = _session(stage(fp32_path), opts)
    result.provider = fp32_pred.provider
    log.info(f"onnxruntime loads {fp32_path.name} on {fp32_pred.provider}")
    if samples is not None:
        result.parity["fp32"] = _verify(torch_pred, fp32_pred, samples, "fp32", fp32_path)
    if opts.fp16:
        _write_fp16(proto, info, fp32_path, stage, opts, result, torch_pred, samples)
    if opts.int8:
        int8_path = variant_path(fp32_path, "int8")
        result.int8 = _export_int8(proto, info, fp32_pred, stage(int8_path), dataset, pre, opts, cfg.data.path,
                                   shown=int8_path)
        result.files["int8"] = int8_path
        result.sizes["int8"] = stage(int8_path).stat().st_size
    result.seconds = time.perf_counter() - t0
    return result


def check_int8_data(dataset: Any | None, opts: ExportOptions, where: str) -> None:
    """The int8 search (`int8_max_drop`) chooses on the run's val split, never on test: refuse it when the
    run's data is here but has no val split (checked before anything is written)."""
    if dataset is None or opts.int8_max_drop is None or dataset.splits.get("val"):
        return
    raise UserError(f"--int8: the run's data ({where}) has no val split, and --int8-max-drop chooses on val images "
                    "only, never on test; a val split carved from train now would hold training images. Train with "
                    "one (`fgcli prepare-data --val-fraction 0.1`, or --set data.val_fraction=0.1) and export that "
                    "run.")


def _load_for_export(path: Path, opts: ExportOptions) -> tuple[Any, Any]:
    """The checkpoint's model (on CPU) as a torch Predictor whose info is the exported file's metadata."""
    from fgcli.engine.checkpoint import load_model
    from fgcli.inference import TorchPredictor

    loaded = load_model(path, device="cpu", use_ema=opts.use_ema)
    size = _input_size(loaded.model, loaded.preprocess, opts.img_size)
    ckpt, cfg = loaded.checkpoint, loaded.config
    info = ModelInfo.from_checkpoint(ckpt, classes=loaded.classes, preprocess=scaled_preprocess(loaded.preprocess, size),
                                     source_sha256=sha256_file(path),
                                     extra={"source_checkpoint": path.name, "weights": loaded.weights,
                                            "source_checkpoint_fgcli_version": str(ckpt.get("fgcli_version", "")),
                                            # the run's data section: `fgcli eval MODEL.onnx` carves the same splits
                                            "data_config": json.dumps(to_dict(cfg.data))})
    info.fgcli_version = __version__
    torch_pred = TorchPredictor(path, loaded=loaded, info=info, calibration=opts.calibration, tta=opts.tta)
    info.extra.update(calibration_metadata(ckpt, torch_pred.calibrated, torch_pred.tta))
    log.info(f"exported probs: {torch_pred.calibration_note()}")
    return torch_pred, cfg


def calibration_metadata(ckpt: dict[str, Any], calibrated: bool, tta: str | None) -> dict[str, str]:
    """Metadata keys: `temperature` (only when `probs` are calibrated), `calibration` (the checkpoint's fit, JSON),
    `reject_threshold` / `reject_recall` (the stored rejection threshold on the top-1 of `probs`, only when they
    are calibrated), `tta` (none / flip) and `outputs` (what logits and probs are)."""
    from fgcli.engine.calibration import stored_calibration

    record = stored_calibration(ckpt)
    out = {"tta": tta or "none"}
    flip = " of the image and its horizontal mirror" if tta else ""
    if calibrated and record is not None:
        out["temperature"] = repr(float(record["temperature"]))
        out["calibration"] = json.dumps(record)
        reject = record.get("reject")
        if isinstance(reject, dict) and reject.get("threshold") is not None:
            # `predict --reject` answers "unknown" when the top-1 of `probs` is below it (chosen on val)
            out["reject_threshold"] = repr(float(reject["threshold"]))
            out["reject_recall"] = repr(float(reject["recall"]))
        probs = f"softmax(fused / temperature){flip}, averaged over the views" if tta else \
            "softmax(logits / temperature), calibrated"
    else:
        probs = "softmax(logits), uncalibrated" + (f", averaged over the views{flip}" if tta else "")
    logits = ("log of the mean uncalibrated softmax of the views" + flip) if tta else "fused logits (uncalibrated)"
    out["outputs"] = f"logits: N x C {logits}; probs: N x C {probs}"
    return out


def _write_fp16(proto: Any, info: ModelInfo, fp32_path: Path, stage: Any, opts: ExportOptions,
                result: ExportResult, torch_pred: Any, samples: Any) -> None:
    from fgcli.formats.onnx.fp16 import convert_fp16

    fp16_path = variant_path(fp32_path, "fp16")
    proto16 = convert_fp16(proto)
    _stamp(proto16, dataclasses.replace(info, precision="fp16", extra=dict(info.extra)))
    check_graph(proto16, "the fp16 graph")
    result.sizes["fp16"] = save_model(proto16, stage(fp16_path))
    result.files["fp16"] = fp16_path
    log.info(f"wrote {fp16_path} ({result.sizes['fp16'] / 1e6:.1f} MB)")
    if samples is not None:
        result.parity["fp16"] = _verify(torch_pred, _session(stage(fp16_path), opts), samples, "fp16", fp16_path)


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


def _verify(torch_pred: Any, pred: Any, samples: Any, precision: str, path: Path) -> Parity:
    """The exported file's probabilities against the torch model's, on the same inputs."""
    parity = compare(lambda x: torch_pred(x)[1], lambda x: pred(x)[1], samples.stacked(), samples.source)
    log.info(f"verify {precision}: {parity.line()}")
    check(parity, precision, str(path), hint="try --exporter torchscript, or report it with --debug."
          if precision == "fp32" else "")
    return parity


def _export_int8(proto: Any, info: ModelInfo, fp32_pred: Any, int8_path: Path, dataset: Any, pre: Preprocess,
                 opts: ExportOptions, where: str, shown: Path | None = None) -> Int8Report:
    calib = _calibration_batches(dataset, pre, opts, where)
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
                          method=opts.calib_method, keep_first=keep_first)
    # int8_calibration*: the activation ranges' images and method (`calibration` is the temperature fit's)
    extra = dict(info.extra, quantization=quant.mode, int8_calibration=quant.calibration,
                 int8_calibration_method=opts.calib_method if calib else "",
                 quantized_layers=f"{quant.quantized_layers}/{quant.weight_layers}",
                 fp32_first_layers=str(quant.fp32_first))
    _stamp(quant.model, dataclasses.replace(info, precision="int8", extra=extra))
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
                      agreement=parity.top1_agreement if parity is not None else 0.0, fp32_first=quant.fp32_first)


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
