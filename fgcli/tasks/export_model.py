"""`fgcli export CHECKPOINT --format ...`: the checkpoint's fused model written in each format asked
(`fgcli.formats`): the fp32 ONNX graph first (every other format is written from it; kept only when asked),
then the others and their `--fp16` / `--int8` variants. Each file is loaded by its format's predictor and checked
against torch with the one parity function and its format's tolerance (`fgcli.parity`); the int8 file is judged
by its writer on the validation split."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli import __version__
from fgcli.config import to_dict
from fgcli.console import log
from fgcli.errors import UserError, closest
from fgcli.formats import ExportJob, ModelFormat, families, format_of, get_format, list_formats, stem, variant
from fgcli.modelinfo import ModelInfo, Preprocess, sha256_file
from fgcli.options import ExportOptions, LoadOptions
from fgcli.parity import Parity, check, compare, on_gpu

__all__ = ["ExportOptions", "ExportResult", "export_checkpoint", "plan_formats", "scaled_preprocess"]


@dataclass
class ExportResult:
    """The files written and what was checked, by format name (fgcli.formats: onnx, onnx-fp16, ...)."""

    info: ModelInfo
    files: dict[str, Path] = field(default_factory=dict)  # format name -> its file (in writing order)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes, companions (an IR's .bin) included
    parity: dict[str, Parity] = field(default_factory=dict)  # against torch, where verified
    reports: dict[str, Any] = field(default_factory=dict)  # what a writer reports (the int8 search: Int8Report)
    devices: dict[str, str] = field(default_factory=dict)  # where each file's check ran, in words
    seconds: float = 0.0

    @property
    def int8(self) -> Any:
        """The int8 file's report (fgcli.formats.onnx.int8.Int8Report), or None."""
        return self.reports.get("onnx-int8")

    def check_line(self, name: str) -> str:
        """What was checked for the file of format `name`, in one line."""
        if name in self.reports and hasattr(self.reports[name], "line"):
            return self.reports[name].line()
        parity = self.parity.get(name)
        return parity.line() if parity is not None else "not verified"


def plan_formats(opts: ExportOptions) -> list[ModelFormat]:
    """The formats to write, as asked (families or format names) plus their `--fp16` / `--int8` variants; one line
    for an unknown name, the checkpoint itself, or a variant none of the chosen formats has."""
    writable = [f.name for f in _writable()]
    if not opts.format:
        raise UserError(f"choose an export format: --format {' | '.join(dict.fromkeys(f.family for f in _writable()))}"
                        " (--onnx is --format onnx), e.g. `fgcli export best.pt --format onnx`.")
    chosen: list[ModelFormat] = []
    for name in opts.format:
        key = name.strip().lower()
        if key not in families() and key not in {f.name for f in list_formats()}:
            raise UserError(f"--format {name}: unknown format.{closest(key, writable)} Valid: {', '.join(writable)}.")
        fmt = variant(key, "fp32") if key in families() else None
        fmt = fmt or get_format(key)
        if fmt.write is None:
            raise UserError(f"--format {name}: the {fmt.title} is what `fgcli export` starts from, not a format it "
                            f"writes; choose from {', '.join(writable)}.")
        chosen.append(fmt)
    for flag, precision in (("--fp16", "fp16"), ("--int8", "int8")):
        if not getattr(opts, precision):
            continue
        found = [v for f in chosen if (v := variant(f.family, precision)) is not None and v.write is not None]
        if not found:
            holders = sorted({f.family for f in _writable() if f.precision == precision})
            raise UserError(f"{flag}: the {' / '.join(dict.fromkeys(f.title for f in chosen))} format holds no "
                            f"{precision} variant; {precision} is in the {', '.join(holders)} format (--format "
                            f"{holders[0] if holders else '...'} {flag}).")
        chosen += found
    return list(dict.fromkeys(chosen))


def _writable() -> list[ModelFormat]:
    return [f for f in list_formats() if f.write is not None]


def _with_sources(chosen: list[ModelFormat]) -> list[ModelFormat]:
    """`chosen` with the formats their writers start from, sources first (the fp32 ONNX graph before the rest)."""
    ordered: list[ModelFormat] = []

    def add(fmt: ModelFormat) -> None:
        if fmt in ordered:
            return
        if fmt.source is not None and fmt.source != "torch":
            source = variant(fmt.source, "fp32")
            if source is None:
                raise UserError(f"the {fmt.title} format starts from the {fmt.source} format, which is not "
                                "registered.")
            add(source)
        ordered.append(fmt)

    for fmt in chosen:
        add(fmt)
    return ordered


def out_paths(checkpoint: Path, chosen: list[ModelFormat], out: Path | None) -> dict[str, Path]:
    """Each chosen format's file: `out` for the first (it must end in that format's suffix), the others beside it
    under the same stem (default: beside the checkpoint, e.g. best.pt -> best.onnx, best.int8.onnx)."""
    first = chosen[0]
    if out is not None and not out.name.lower().endswith(first.suffix):
        raise UserError(f"--out {out} must end in {first.suffix} (the {first.title} file; the other formats go "
                        "beside it under the same name).")
    base = out if out is not None else checkpoint
    return {f.name: base.with_name(stem(base) + f.suffix) for f in chosen}


def scaled_preprocess(pre: Preprocess, img_size: int) -> Preprocess:
    """The preprocessing for another input size, keeping the resize / crop ratio."""
    if img_size == pre.img_size:
        return pre
    resize = max(img_size, round(pre.resize * img_size / pre.img_size))
    return dataclasses.replace(pre, img_size=img_size, resize=resize)


def export_checkpoint(checkpoint: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export a checkpoint's fused model in each format of `options` (see ExportOptions), and check every file.

    All or nothing: every file is written and checked under a hidden temp name beside its final one (a format's
    companion files too) and renamed into place only when the whole export succeeded; an error or Ctrl-C leaves
    no new file and keeps older ones. Formats only needed as a source (the fp32 ONNX graph of an IR-only export)
    are written to a temporary folder and dropped.
    """
    opts = options or ExportOptions()
    staged: dict[Path, tuple[Path, ModelFormat]] = {}

    def stage(final: Path, fmt: ModelFormat) -> Path:
        if final not in staged:
            staged[final] = (final.with_name(f".{stem(final)}.partial-{os.getpid()}{fmt.suffix}"), fmt)
        return staged[final][0]

    def parts(path: Path, fmt: ModelFormat) -> list[Path]:
        return [path.with_name(stem(path) + end) for end in fmt.companions] + [path]

    try:
        with tempfile.TemporaryDirectory(prefix="fgcli-export-") as tmp:
            result = _export_checkpoint(Path(checkpoint), opts, stage, Path(tmp))
        for final, (temp, fmt) in staged.items():
            for src, dst in zip(parts(temp, fmt), parts(final, fmt), strict=True):  # companions before the main file
                os.replace(src, dst)
        return result
    finally:
        for temp, fmt in staged.values():
            for part in parts(temp, fmt):
                part.unlink(missing_ok=True)


def _export_checkpoint(path: Path, opts: ExportOptions, stage: Any, tmp: Path) -> ExportResult:
    t0 = time.perf_counter()
    given = format_of(path)
    if not given.heads:
        raise UserError(f"{path} is an {given.title} file; `fgcli export` takes the training checkpoint (.pt) it "
                        "came from.")
    chosen = plan_formats(opts)
    for fmt in chosen:
        fmt.check_runtime(f"--format {fmt.family}")
    finals = out_paths(path, chosen, opts.out)
    torch_pred, cfg = _load_for_export(path, opts)
    info, pre = torch_pred.info, torch_pred.info.preprocess
    job = ExportJob(info=info, options=opts, model=torch_pred.model, img_size=pre.img_size,
                    temperature=torch_pred.fused.temperature, tta=torch_pred.tta, data_where=cfg.data.path)
    if opts.verify or any(f.needs_data for f in chosen):
        from fgcli.data.select import reachable_run_data

        job.dataset = reachable_run_data(cfg)
    for fmt in chosen:
        if fmt.check is not None:
            fmt.check(job)
    log.info(f"exporting {info.method} / {info.backbone} ({info.extra['weights']} weights, {len(info.classes)} "
             f"classes) at {pre.img_size}x{pre.img_size}, {'dynamic' if opts.dynamic_batch else 'static'} batch, "
             f"exporter: {opts.exporter}, formats: {', '.join(f.name for f in chosen)}")
    samples = None
    if opts.verify:
        from fgcli.data.rundata import load_batches

        # a pass / fail check of the numerics: any real images do, and the test split stays untouched
        samples = load_batches(job.dataset, ("val", "train"), pre, opts.verify_images, where=cfg.data.path)
    result = ExportResult(info=info)
    for fmt in _with_sources(chosen):
        final = finals.get(fmt.name)
        target = stage(final, fmt) if final is not None else tmp / f"model{fmt.suffix}"
        if final is not None:
            job.shown[target] = final
        report = fmt.write(job, target)
        job.written[fmt.name] = target
        if final is None:
            continue
        result.files[fmt.name] = final
        result.sizes[fmt.name] = sum(p.stat().st_size for p in [target] + [
            target.with_name(stem(target) + end) for end in fmt.companions])
        if report is not None:
            result.reports[fmt.name] = report
            continue
        predictor = fmt.load(target, LoadOptions(device=opts.device, threads=opts.threads, providers=(
            opts.providers if "providers" in fmt.options else None)))
        job.cache[f"{fmt.name}-predictor"] = predictor
        result.devices[fmt.name] = predictor.device
        log.info(f"{final.name} loads on {predictor.device}")
        if samples is not None:
            result.parity[fmt.name] = _verify(torch_pred, predictor, samples, fmt, final)
    result.seconds = time.perf_counter() - t0
    return result


def _load_for_export(path: Path, opts: ExportOptions) -> tuple[Any, Any]:
    """The checkpoint's model (on CPU) as a torch Predictor whose info is the exported file's metadata."""
    from fgcli.engine.checkpoint import load_model
    from fgcli.inference import TorchPredictor

    loaded = load_model(path, device="cpu", use_ema=opts.ema)
    size = _input_size(loaded.model, loaded.preprocess, opts.img_size)
    ckpt, cfg = loaded.checkpoint, loaded.config
    info = ModelInfo.from_checkpoint(ckpt, classes=loaded.classes, preprocess=scaled_preprocess(loaded.preprocess, size),
                                     source_sha256=sha256_file(path),
                                     extra={"source_checkpoint": path.name, "weights": loaded.weights,
                                            "source_checkpoint_fgcli_version": str(ckpt.get("fgcli_version", "")),
                                            # the run's data section: `fgcli eval MODEL.onnx` carves the same splits
                                            "data_config": json.dumps(to_dict(cfg.data))})
    info.fgcli_version = __version__
    info.extra.update(provenance_metadata(ckpt))
    torch_pred = TorchPredictor(path, loaded=loaded, info=info, calibration=opts.calibration, tta=opts.tta)
    info.extra.update(calibration_metadata(ckpt, torch_pred.calibrated, torch_pred.tta))
    log.info(f"exported probs: {torch_pred.calibration_note()}")
    return torch_pred, cfg


def provenance_metadata(ckpt: dict[str, Any]) -> dict[str, str]:
    """Metadata keys: `val_top1` (the exported weights' fused val top-1 %, when validated) and `distill` (JSON:
    the teacher a distilled student learnt from: path, method, backbone, its val top-1, alpha, T)."""
    from fgcli.engine.checkpoint import checkpoint_val_top1

    out = {}
    top1 = checkpoint_val_top1(ckpt)
    if top1 is not None:
        out["val_top1"] = repr(top1)
    if isinstance(ckpt.get("distill"), dict):
        out["distill"] = json.dumps(ckpt["distill"])
    return out


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


def _input_size(model: Any, pre: Preprocess, requested: int | None) -> int:
    fixed = getattr(model, "input_size", None)
    size = requested or pre.img_size
    if fixed is not None and size != fixed:
        raise UserError(f"--img-size {size}: this model only accepts {fixed}x{fixed} inputs (fixed-size layers). "
                        f"Use --img-size {fixed} or leave it out.")
    if size < 8:
        raise UserError(f"--img-size {size} is too small; use at least 32.")
    return int(size)


def _verify(torch_pred: Any, pred: Any, samples: Any, fmt: ModelFormat, path: Path) -> Parity:
    """The exported file's probabilities against the torch model's, on the same inputs."""
    parity = compare(lambda x: torch_pred(x)[1], lambda x: pred(x)[1], samples.stacked(), samples.source,
                     exact=fmt.precision == "fp32")
    log.info(f"verify {fmt.name}: {parity.line()}")
    check(parity, fmt.precision, str(path), hint="try --exporter torchscript, or report it with --debug."
          if fmt.precision == "fp32" else "", gpu=on_gpu(pred.device))
    return parity
