"""`fgcli bench`: latency and throughput of a model in every format it can take (fgcli.formats: torch eager, ONNX
on each onnxruntime provider with its int8 file, and each other format MODEL can be written to, e.g. the OpenVINO
IR), per batch size, on the same inputs and thread count; every backend is compared with the first one with the
one parity function and judged by its precision's tolerance (fgcli.parity)."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.errors import UserError
from fgcli.formats import ExportJob, ModelFormat, families, format_of, list_formats, resolve, variant
from fgcli.inference import PRECISIONS, OnnxPredictor, Predictor, TorchPredictor
from fgcli.options import BenchOptions, ExportOptions, LoadOptions
from fgcli.parity import Parity, compare_probs, failure, on_gpu, unstable_rows
from fgcli.timing import BenchRow, bench_predictor

#: random inputs for the parity check when no --images are given
PARITY_RANDOM = 16


@dataclass
class BenchReport:
    """The rows of `fgcli bench` (iterable like a list of BenchRow) and what goes around the table."""

    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "what (why)"
    notes: list[str] = field(default_factory=list)  # node placement per OpenVINO / GPU backend
    reference: str = ""  # the backend every other one is compared with, in words
    parity_inputs: str = ""  # the inputs of that comparison, in words
    failures: list[str] = field(default_factory=list)  # --verify: backends outside the tolerance

    def __iter__(self) -> Iterator[BenchRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> BenchRow:
        return self.rows[index]


@dataclass
class _Target:
    """One backend to time: its format family, its precision, and how to build its Predictor."""

    backend: str  # torch | onnx | openvino | ...
    precision: str  # fp32 | fp16 | bf16 | int8
    make: Callable[[], Predictor]

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def parse_ints(text: str, flag: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (positive), with a clear error naming the flag."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{flag} '{text}' must be comma-separated integers, e.g. 1,8,32.") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{flag} '{text}' must list positive integers, e.g. 1,8,32.")
    return values


def available_backends(fmt: ModelFormat, checkpoint: bool) -> list[str]:
    """The format families bench can time for a MODEL of format `fmt`: torch with a checkpoint, MODEL's own
    family, and every family written (directly or through another) from it, in registration order."""
    reach = {fmt.family}
    grown = True
    while grown:
        grown = False
        for f in list_formats():
            if f.write is not None and f.precision == "fp32" and f.source in reach and f.family not in reach:
                reach.add(f.family)
                grown = True
    return [name for name in families() if name in reach or (name == "torch" and checkpoint)]


def parse_backends(text: str | Sequence[str] | None, model: str | Path,
                   checkpoint: str | Path | None = None) -> list[str]:
    """The backends to run: all that MODEL has by default (`available_backends`); torch needs a checkpoint
    (MODEL, or `checkpoint`, the .pt an exported MODEL came from)."""
    fmt = format_of(model)
    available = available_backends(fmt, fmt.heads or checkpoint is not None)
    if not text:
        return available
    names = text.split(",") if isinstance(text, str) else list(text)
    chosen = [b.strip().lower() for b in names if b.strip()]
    for b in chosen:
        if b not in families():
            raise UserError(f"--backends: unknown backend '{b}'. Valid: {', '.join(families())}.")
        if b not in available:
            more = " Give the checkpoint (.pt) to also time torch." if b == "torch" else ""
            raise UserError(f"--backends {b}: {model} is an {fmt.title} file, which only has the "
                            f"{', '.join(available)} backend{'s' if len(available) > 1 else ''}.{more}")
    return list(dict.fromkeys(chosen))


def expand_providers(providers: Sequence[str] | None, device: str = "auto") -> tuple[list[str | None], list[str]]:
    """Each provider of `--providers` timed on its own (None: the one `--device` picks); 'all' = cpu, cuda where
    onnxruntime's CUDA is usable, openvino where its plugin is installed. Returns (providers, skipped lines)."""
    from fgcli.inference import OPENVINO_EP, openvino_missing, provider_name, resolve_providers

    if not providers:
        return [None], []
    chosen: list[str | None] = []
    skipped: list[str] = []
    for name in providers:
        if name.strip().lower() != "all":
            chosen.append(name.strip())
            continue
        chosen.append("cpu")
        if device != "cpu" and any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider"
                                   for p in resolve_providers(None, device)):
            chosen.append("cuda")
        missing = openvino_missing()
        if missing is None:
            chosen.append("openvino")
        else:
            skipped.append(f"openvino ({missing})")
    seen: dict[str, str | None] = {}
    for name in chosen:
        seen.setdefault(provider_name(name) if name else "", name)
    ordered = list(seen.values())
    if any(provider_name(p) == OPENVINO_EP for p in ordered if p):
        from fgcli.inference import openvino_device

        openvino_device()  # asked for by name: one line naming the package when it is missing
    return ordered, skipped


def bench_model(model: str | Path, options: BenchOptions | None = None,
                progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark any registered model file in every format it can take, side by side (see the module docstring).

    Every backend gets the same seeded inputs and thread count: torch eager (a checkpoint MODEL, or
    `checkpoint`), then for each provider of `providers` the ONNX file (MODEL, or a temporary export) and
    `<stem>.int8.onnx` when it sits beside MODEL (OpenVINO through onnxruntime at each of `precisions`), then each
    other format (MODEL, or a temporary file written from the ONNX one) at each precision it takes (default fp32
    and bf16; bf16 only on CPUs with AVX-512 BF16 / AMX). Each backend's top-1 and max |Δprob| are compared with
    the first one's on `images` (a folder; default: seeded random inputs); `verify` records the backends outside
    the tolerance in `failures`. A format whose runtime is not installed is skipped with a note (an error when
    named in `backends`).
    """
    import torch

    from fgcli.inference import OPENVINO_EP, check_precision, provider_name

    opts = options or BenchOptions()
    fmt, path = resolve(model)
    ckpt = Path(opts.checkpoint) if opts.checkpoint is not None else (path if fmt.heads else None)
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"--checkpoint {ckpt} does not exist. Give the .pt the {fmt.title} file was exported "
                        "from.")
    if opts.checkpoint is not None and fmt.heads:
        raise UserError("--checkpoint applies to an exported MODEL; a .pt MODEL is the checkpoint itself.")
    backends = parse_backends(opts.backends, path, opts.checkpoint)
    threads = int(opts.threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    wanted = list(dict.fromkeys(check_precision(p) for p in (opts.precisions or PRECISIONS)))
    groups, skipped = expand_providers(opts.providers, opts.device)
    report = BenchReport(skipped=skipped)
    others = [b for b in backends if b not in ("torch", "onnx")]
    for family in list(others):
        missing = variant(family, "fp32").missing_runtime()  # type: ignore[union-attr]
        if missing is not None:
            if opts.backends:
                raise UserError(f"--backends {family}: {missing}.")
            report.skipped.append(f"{family} ({missing})")
            others.remove(family)
    tunable = [b for b in others if "precision" in variant(b, "fp32").options]  # type: ignore[union-attr]
    if opts.precisions and set(wanted) - {"fp32"} and not tunable and not any(
            g and provider_name(g) == OPENVINO_EP for g in groups):
        raise UserError(f"--precision {','.join(opts.precisions)}: bf16 runs on OpenVINO only; add openvino to "
                        "--providers (pip install \"fgcli[openvino]\"), or time a format OpenVINO runs "
                        "(--backends).")
    with tempfile.TemporaryDirectory(prefix="fgcli-bench-") as tmp:
        torch_pred = None
        if ckpt is not None and ("torch" in backends or (fmt.heads and backends != ["torch"])):
            torch_pred = TorchPredictor(ckpt, device=opts.device, threads=threads, use_ema=opts.ema)
        if fmt.heads:
            assert torch_pred is not None
            size = _torch_size(torch_pred, opts.img_size)
            file_precision = "fp32"
        else:
            assert fmt.read_info is not None, f"the {fmt.title} format has no metadata reader"
            info = fmt.read_info(path)
            file_precision = info.precision
            size = _check_size(opts.img_size, info.preprocess.img_size, path, fmt)
            if torch_pred is not None:
                _check_source(info.source_sha256, ckpt, path)
        files = _files(fmt, path, ["onnx", *others] if "onnx" in backends else others, torch_pred, size,
                       Path(tmp), progress)
        targets: list[_Target] = []
        if torch_pred is not None and "torch" in backends:
            targets.append(_Target("torch", "fp32", lambda: torch_pred))
        if ckpt is None:
            report.skipped.append(f"torch (an {fmt.suffix} MODEL: give --checkpoint BEST.pt to time torch eager and "
                                  "use it as the fp32 reference)")
        if "onnx" in backends:
            onnx_precision = file_precision if fmt.family == "onnx" else "fp32"
            int8: Path | None = variant("onnx", "int8").path_for(path)  # type: ignore[union-attr]
            if onnx_precision == "int8" or int8 == path:  # MODEL is the int8 file itself
                int8 = None
            elif not int8.is_file():
                report.skipped.append(f"int8 (no {int8.name} beside {path.name}: `fgcli export --int8` writes it)")
                int8 = None
            for provider in groups:
                targets += _onnx_targets(files["onnx"], onnx_precision, int8, provider, opts.device, threads,
                                         wanted, report.skipped)
        for family in others:
            precision = file_precision if fmt.family == family else "fp32"
            targets += _format_targets(family, files[family], precision, opts.device, threads, wanted,
                                       report.skipped)
        report.skipped = list(dict.fromkeys(report.skipped))
        _run_targets(targets, report, opts.batch_sizes, size, threads, opts.warmup, opts.iters, opts.images,
                     opts.max_images, progress)
    if opts.verify:
        report.failures = check_parity(report.rows, opts.min_agreement)
    return report


def _files(fmt: ModelFormat, path: Path, wanted: Sequence[str], torch_pred: Any, size: int, tmp: Path,
           progress: Callable[[str], None] | None) -> dict[str, Path]:
    """MODEL and every family of `wanted` written from it into `tmp` (sources first): family -> file."""
    files = {fmt.family: path}
    if fmt.heads:  # a checkpoint: the other formats start from its model
        job = ExportJob(info=torch_pred.info, options=ExportOptions(), model=torch_pred.model.cpu(), img_size=size,
                        temperature=torch_pred.fused.temperature, quiet=True)
    else:
        job = ExportJob(info=fmt.read_info(path), options=ExportOptions(), quiet=True)  # type: ignore[misc]
    job.written = {variant(family, "fp32").name: file for family, file in files.items()}  # type: ignore[union-attr]

    def write(family: str) -> Path:
        if family in files:
            return files[family]
        target = variant(family, "fp32")
        assert target is not None and target.write is not None and target.source is not None
        write(target.source)
        out = tmp / f"model{target.suffix}"
        if progress is not None:
            progress(f"writing a temporary {target.title} file")
        target.write(job, out)
        job.written[target.name] = out
        files[family] = out
        return out

    for family in wanted:
        write(family)
    if fmt.heads:
        torch_pred.model.to(torch_pred.torch_device)
    return files


def _torch_size(torch_pred: Any, img_size: int | None) -> int:
    fixed = getattr(torch_pred.model, "input_size", None)
    size = img_size or torch_pred.info.preprocess.img_size
    if fixed is not None and size != fixed:
        raise UserError(f"--img-size {size}: this {torch_pred.info.method} model only accepts {fixed}x{fixed} "
                        f"inputs. Use --img-size {fixed}.")
    return int(size)


def _check_source(source_sha256: str, ckpt: Path | None, path: Path) -> None:
    """Warn when --checkpoint is not the file the .onnx was exported from (its metadata records the hash)."""
    from fgcli.console import log
    from fgcli.modelinfo import sha256_file

    if ckpt is not None and source_sha256 and sha256_file(ckpt) != source_sha256:
        log.warning(f"--checkpoint {ckpt} is not the checkpoint {path.name} was exported from (SHA-256 differs); "
                    "top-1 agreement compares two different models")


def _onnx_targets(fp32_path: Path, file_precision: str, int8_path: Path | None, provider: str | None, device: str,
                  threads: int, precisions: Sequence[str], skipped: list[str]) -> list[_Target]:
    """The ONNX backends of one onnxruntime provider: MODEL's file (at each precision on OpenVINO), then the int8
    file."""
    from fgcli.inference import OPENVINO_EP, provider_name

    chosen = [provider] if provider else None
    if provider is None or provider_name(provider) != OPENVINO_EP:
        def make(file: Path) -> Callable[[], Predictor]:
            return lambda: OnnxPredictor(file, providers=chosen, device=device, threads=threads)

        targets = [_Target("onnx", file_precision, make(fp32_path))]
        if int8_path is not None:
            targets.append(_Target("onnx", "int8", make(int8_path)))
        return targets

    def make_ov(file: Path, precision: str) -> Callable[[], Predictor]:
        return lambda: OnnxPredictor(file, providers=[OPENVINO_EP], threads=threads, precision=precision)

    if file_precision == "int8":  # MODEL is an int8 file: int8 kernels, the float layers at fp32
        return [_Target("onnx", "int8", make_ov(fp32_path, "fp32"))]
    targets = [_Target("onnx", p, make_ov(fp32_path, p)) for p in _runnable(precisions, "onnx OpenVINO", skipped)]
    if int8_path is not None:  # int8 kernels; the layers left in float run at fp32
        targets.append(_Target("onnx", "int8", make_ov(int8_path, "fp32")))
    return targets


def _format_targets(family: str, file: Path, file_precision: str, device: str, threads: int,
                    precisions: Sequence[str], skipped: list[str]) -> list[_Target]:
    """The backends of another format's file: at each precision its runtime takes (fp32 only otherwise)."""
    fmt = variant(family, "fp32")
    assert fmt is not None
    where = "cpu" if fmt.cpu_only else device

    def make(precision: str) -> Callable[[], Predictor]:
        return lambda: fmt.load(file, LoadOptions(device=where, threads=threads, precision=precision))

    if file_precision != "fp32" or "precision" not in fmt.options:
        return [_Target(family, file_precision, make("fp32"))]
    return [_Target(family, p, make(p)) for p in _runnable(precisions, family, skipped)]


def _runnable(precisions: Sequence[str], what: str, skipped: list[str]) -> list[str]:
    """The precisions this CPU runs (bf16 only with AVX-512 BF16 / AMX; otherwise a skipped note and fp32)."""
    from fgcli.inference import bf16_supported

    runnable = []
    for precision in precisions:
        if precision == "bf16" and not bf16_supported():
            skipped.append(f"{what} bf16 (this CPU has neither AVX-512 BF16 nor AMX)")
            precision = "fp32"
        runnable.append(precision)
    return list(dict.fromkeys(runnable))


def _parity_inputs(predictor: Predictor, size: int, images: str | Path | None,
                   max_images: int) -> tuple[np.ndarray, str]:
    """The images every backend is compared on: up to `max_images` from a folder, else seeded random ones."""
    if images is None:
        rng = np.random.default_rng(1234)
        return rng.standard_normal((PARITY_RANDOM, 3, size, size), dtype=np.float32), \
            f"{PARITY_RANDOM} random inputs (give --images DIR for real ones)"
    from fgcli.tasks.predict_images import _try, collect_images, make_loader

    load = make_loader(predictor)
    arrays = []
    for file in collect_images([str(images)])[:max_images]:
        array, _ = _try(load, file)
        if array is not None:
            arrays.append(array)
    if not arrays:
        raise UserError(f"--images {images}: none of its images could be read.")
    return np.stack(arrays), f"{len(arrays)} images from {images}"


def _run_targets(targets: Sequence[_Target], report: BenchReport, batch_sizes: Sequence[int], size: int,
                 threads: int, warmup: int, iters: int, images: str | Path | None, max_images: int,
                 progress: Callable[[str], None] | None) -> None:
    """Time each target in turn (one session alive at a time) and compare its outputs with the first one's."""
    from fgcli.inference import softmax

    reference: np.ndarray | None = None
    reference_fn: Callable[[np.ndarray], np.ndarray] | None = None  # kept to probe images at a discrete decision
    inputs: np.ndarray | None = None
    for target in targets:
        if progress is not None:
            progress(f"loading {target.label}")
        predictor = target.make()
        if inputs is None:
            inputs, report.parity_inputs = _parity_inputs(predictor, size, images, max_images)
            report.reference = target.label
        probs = softmax(predictor(inputs)[0]).astype(np.float64)
        if reference is None:
            reference, reference_fn = probs, _probs_of(predictor)
        aside = unstable_rows(reference_fn, inputs, reference, probs) if target.precision == "fp32" else None
        parity = compare_probs(reference, probs, report.parity_inputs, aside)
        if parity.unstable:
            report.notes.append(f"{target.label}: {parity.line()}")
        if getattr(predictor, "mixed", False):
            report.notes.append(f"{target.label}: {predictor.placement_line()}")  # type: ignore[attr-defined]
        for row in bench_predictor(predictor, batch_sizes, size, threads, warmup, iters, progress=progress):
            report.rows.append(replace(row, backend=target.backend, precision=target.precision,
                                       agreement=100.0 * parity.top1_agreement, max_dprob=parity.max_abs_dprob))
        del predictor


def _probs_of(predictor: Predictor) -> Callable[[np.ndarray], np.ndarray]:
    from fgcli.inference import softmax

    return lambda batch: softmax(predictor(batch)[0]).astype(np.float64)


def check_parity(rows: Sequence[BenchRow], min_agreement: float | None = None) -> list[str]:
    """bench --verify: one line per backend whose outputs differ from the reference's beyond the tolerance of its
    precision (`fgcli.parity.TOLERANCES`; `min_agreement`, in percent, replaces the reduced precisions')."""
    failures: dict[tuple[str, str, str], str] = {}
    for r in rows:
        if r.agreement is None or r.max_dprob is None:
            continue
        parity = Parity(num_images=0, max_abs_dprob=r.max_dprob, top1_agreement=r.agreement / 100.0, inputs="")
        problem = failure(parity, r.precision, gpu=on_gpu(r.device),
                          min_agreement=None if min_agreement is None else min_agreement / 100.0)
        if problem is not None:
            failures[(r.backend, r.device, r.precision)] = f"{_label(r)} {r.precision}: {problem}"
    return list(failures.values())


def _check_size(requested: int | None, exported: int, path: Path, fmt: ModelFormat) -> int:
    if requested is not None and requested != exported:
        raise UserError(f"--img-size {requested}: {path} was exported for {exported}x{exported} inputs. Re-export "
                        f"with `fgcli export CHECKPOINT --format {fmt.family} --img-size {requested}` or drop "
                        "--img-size.")
    return exported


def speedups(rows: Sequence[BenchRow], base: str = "torch", other: str = "onnx") -> dict[int, float]:
    """Per batch size: median latency of `base` / median latency of `other` (>1 = `other` is faster); the first
    row of each backend and batch size counts (the fp32 one, before int8)."""
    by: dict[tuple[str, int], BenchRow] = {}
    for r in rows:
        by.setdefault((r.backend, r.batch), r)
    return {b: by[(base, b)].p50_ms / by[(other, b)].p50_ms
            for (name, b) in by if name == other and (base, b) in by}


def rows_csv(rows: Sequence[BenchRow]) -> str:
    """The rows as CSV text (one line per backend x batch size)."""
    buf = io.StringIO()
    fields = list(BenchRow.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        writer.writerow({k: ("" if v is None else f"{v:.3e}" if k == "max_dprob" else f"{v:.4f}"
                             if isinstance(v, float) else v) for k, v in d.items()})
    return buf.getvalue()


def _key(r: BenchRow) -> tuple[str, str, str]:
    return r.backend, r.device, r.precision


def relative_speed(rows: Sequence[BenchRow]) -> list[float | None]:
    """Per row: the first backend's median latency at the same batch size / this row's (>1 = faster)."""
    if not rows:
        return []
    first = _key(rows[0])
    base = {r.batch: r.p50_ms for r in rows if _key(r) == first}
    return [base[r.batch] / r.p50_ms if r.batch in base and r.p50_ms > 0 else None for r in rows]


def _label(r: BenchRow) -> str:
    """The table's backend cell: the format and where it ran ('torch cpu', 'onnx CPU', 'onnx OpenVINO')."""
    device = r.device.removeprefix("onnxruntime ").removeprefix(f"{r.backend} ").replace("ExecutionProvider", "")
    device = device.split(" (")[0]
    return r.backend if device.lower() == r.backend.lower() else f"{r.backend} {device}"


def rows_table(rows: Sequence[BenchRow], title: str = "Inference benchmark") -> Any:
    """A rich table of the rows (80 columns wide): latency, throughput, speed-up over the first backend, and
    (when compared) the top-1 agreement and max |Δprob| against it."""
    from rich import box
    from rich.table import Table

    ratio = relative_speed(rows)
    compared = any(r.agreement is not None for r in rows)
    first = rows[0].backend if rows else "torch"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = ["backend", "prec", "batch", "p50 ms", "p90 ms", "img/s", f"vs {first}"]
    if compared:
        columns += ["top-1", "|Δp|"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("backend", "prec") else "right", no_wrap=True)
    for r, speed in zip(rows, ratio, strict=True):
        cells = [_label(r), r.precision, str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.throughput:.1f}",
                 f"{speed:.2f}x" if speed is not None else ""]
        if compared:
            cells += ["" if r.agreement is None else f"{r.agreement:.1f}%",
                      "" if r.max_dprob is None else f"{r.max_dprob:.0e}"]
        table.add_row(*cells)
    if rows:
        table.caption = f"{rows[0].img_size}x{rows[0].img_size} inputs, {rows[0].threads} threads, {rows[0].iters} iters"
    return table
