"""Latency and throughput of a model per backend (torch eager, onnxruntime) and batch size, on the same inputs
and thread count."""

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
from fgcli.inference import PRECISIONS, OnnxPredictor, Predictor, TorchPredictor, is_onnx
from fgcli.parity import Parity, compare_probs, failure
from fgcli.timing import BenchRow, bench_predictor

BACKENDS = ("torch", "onnx")


def parse_ints(text: str, flag: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (positive), with a clear error naming the flag."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{flag} '{text}' must be comma-separated integers, e.g. 1,8,32.") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{flag} '{text}' must list positive integers, e.g. 1,8,32.")
    return values


def parse_backends(text: str | None, model: Path, checkpoint: str | Path | None = None) -> list[str]:
    """The backends to run: all that the model has by default; `torch` needs a checkpoint (MODEL or
    `checkpoint`, the .pt an .onnx MODEL came from)."""
    available = ["onnx"] if is_onnx(model) and checkpoint is None else ["torch", "onnx"]
    if not text:
        return available
    chosen = [b.strip().lower() for b in text.split(",") if b.strip()]
    for b in chosen:
        if b not in BACKENDS:
            raise UserError(f"--backends: unknown backend '{b}'. Valid: {', '.join(BACKENDS)}.")
        if b not in available:
            raise UserError(f"--backends {b}: {model} is an .onnx file, which only has the onnx backend. Give the "
                            "checkpoint (.pt) to also time torch.")
    return list(dict.fromkeys(chosen))


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
    """One backend to time: a label, its precision, and how to build its Predictor."""

    backend: str  # torch | onnx | openvino
    precision: str  # fp32 | fp16 | bf16 | int8
    make: Callable[[], Predictor]

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


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


def int8_sibling(path: Path) -> Path:
    """best.pt / best.onnx -> best.int8.onnx (where `fgcli export --int8` writes it)."""
    return path.with_name(f"{path.stem}.int8.onnx")


def bench_model(model: str | Path, backends: Sequence[str], batch_sizes: Sequence[int], *, img_size: int | None = None,
                warmup: int = 3, iters: int = 20, threads: int | None = None, device: str = "auto",
                providers: Sequence[str] | None = None, use_ema: bool = True,
                progress: Callable[[str], None] | None = None, precisions: Sequence[str] | None = None,
                checkpoint: str | Path | None = None, images: str | Path | None = None, max_images: int = 64,
                verify: bool = False, min_agreement: float | None = None) -> BenchReport:
    """Benchmark a checkpoint (torch, and onnxruntime on a temporary export) or an `.onnx` file, side by side.

    Every backend gets the same seeded inputs and thread count: torch eager (a `.pt` MODEL, or `checkpoint` for an
    `.onnx`), then for each provider of `providers` the fp32 file and `<stem>.int8.onnx` when it sits beside
    MODEL; OpenVINO at each of `precisions` (default fp32 and bf16; bf16 only on CPUs with AVX-512 BF16 / AMX).
    Each backend's top-1 and max |Δprob| are compared with the first one's on `images` (a folder; default:
    seeded random inputs); `verify` records the backends outside the tolerance in `failures`.
    """
    import torch

    from fgcli.inference import OPENVINO_EP, OPENVINO_INSTALL, check_precision, provider_name

    path = Path(model)
    if not path.exists():
        raise UserError(f"model file {path} does not exist. Give a checkpoint (.pt) or an exported .onnx file.")
    ckpt = Path(checkpoint) if checkpoint is not None else (None if is_onnx(path) else path)
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"--checkpoint {ckpt} does not exist. Give the .pt the .onnx file was exported from.")
    if checkpoint is not None and not is_onnx(path):
        raise UserError("--checkpoint applies to an .onnx MODEL; a .pt MODEL is the checkpoint itself.")
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    wanted = list(dict.fromkeys(check_precision(p) for p in (precisions or PRECISIONS)))
    groups, skipped = expand_providers(providers, device)
    if precisions and set(wanted) - {"fp32"} and not any(g and provider_name(g) == OPENVINO_EP for g in groups):
        raise UserError(f"--precision {','.join(precisions)}: bf16 runs on OpenVINO only; add openvino to "
                        f"--providers ({OPENVINO_INSTALL}).")
    report = BenchReport(skipped=skipped)
    with tempfile.TemporaryDirectory(prefix="fgcli-bench-") as tmp:
        torch_pred = None
        if ckpt is not None and ("torch" in backends or (not is_onnx(path) and "onnx" in backends)):
            torch_pred = TorchPredictor(ckpt, device=device, threads=threads, use_ema=use_ema)
        file_precision = "fp32"
        if is_onnx(path):
            fp32_path = path
            info = _onnx_info(path)
            file_precision = info.precision
            size = _check_size(img_size, info.preprocess.img_size, path)
            if torch_pred is not None:
                _check_source(info.source_sha256, ckpt, path)
        else:
            assert torch_pred is not None
            size = _torch_size(torch_pred, img_size)
            fp32_path = Path(tmp, "model.onnx")
            if "onnx" in backends:
                from fgcli.tasks.export_model import export_loaded

                if progress is not None:
                    progress("exporting to a temporary .onnx")
                export_loaded(torch_pred.model.cpu(), torch_pred.info, fp32_path, img_size=size,
                              temperature=torch_pred.fused.temperature)
                torch_pred.model.to(torch_pred.torch_device)
        targets: list[_Target] = []
        if torch_pred is not None and "torch" in backends:
            targets.append(_Target("torch", "fp32", lambda: torch_pred))
        if ckpt is None:
            report.skipped.append("torch (an .onnx MODEL: give --checkpoint BEST.pt to time torch eager and use it "
                                  "as the fp32 reference)")
        if "onnx" in backends:
            int8: Path | None = int8_sibling(path)
            if file_precision == "int8":  # MODEL is the int8 file itself
                int8 = None
            elif not int8.is_file():
                report.skipped.append(f"int8 (no {int8.name} beside {path.name}: `fgcli export --int8` writes it)")
                int8 = None
            for provider in groups:
                targets += _onnx_targets(fp32_path, file_precision, int8, provider, device, threads, wanted,
                                         report.skipped)
        report.skipped = list(dict.fromkeys(report.skipped))
        _run_targets(targets, report, batch_sizes, size, threads, warmup, iters, images, max_images, progress)
    if verify:
        report.failures = check_parity(report.rows, min_agreement)
    return report


def _onnx_info(path: Path) -> Any:
    """The ModelInfo in an `.onnx` file's metadata, read without starting a session."""
    import onnx

    from fgcli.modelinfo import ModelInfo, get_metadata

    try:
        proto = onnx.load(str(path), load_external_data=False)
        if not proto.graph.node:  # an empty file parses as an empty model
            raise ValueError("no graph")
    except Exception as e:
        raise UserError(f"cannot read {path} as an ONNX model ({type(e).__name__}); the file may be truncated or "
                        "corrupt. Re-export it with `fgcli export CHECKPOINT --onnx`.") from e
    return ModelInfo.from_props(get_metadata(proto), source=str(path))


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
    """The backends of one provider: MODEL's file (at each precision on OpenVINO), then the int8 file."""
    from fgcli.inference import OPENVINO_EP, bf16_supported, provider_name

    chosen = [provider] if provider else None
    if provider is None or provider_name(provider) != OPENVINO_EP:
        def make(file: Path) -> Callable[[], Predictor]:
            return lambda: OnnxPredictor(file, providers=chosen, device=device, threads=threads)

        targets = [_Target("onnx", file_precision, make(fp32_path))]
        if int8_path is not None:
            targets.append(_Target("onnx", "int8", make(int8_path)))
        return targets
    runnable = []
    for precision in precisions:
        if precision == "bf16" and not bf16_supported():
            skipped.append("openvino bf16 (this CPU has neither AVX-512 BF16 nor AMX)")
            precision = "fp32"
        runnable.append(precision)

    def make_ov(file: Path, precision: str) -> Callable[[], Predictor]:
        return lambda: OnnxPredictor(file, providers=[OPENVINO_EP], threads=threads, precision=precision)

    if file_precision == "int8":  # MODEL is an int8 file: int8 kernels, the float layers at fp32
        return [_Target("openvino", "int8", make_ov(fp32_path, "fp32"))]
    targets = [_Target("openvino", p, make_ov(fp32_path, p)) for p in dict.fromkeys(runnable)]
    if int8_path is not None:  # int8 kernels; the layers left in float run at fp32
        targets.append(_Target("openvino", "int8", make_ov(int8_path, "fp32")))
    return targets


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
    from fgcli.inference import CPU_EP, softmax

    reference: np.ndarray | None = None
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
            reference = probs
        parity = compare_probs(reference, probs, report.parity_inputs)
        if isinstance(predictor, OnnxPredictor) and predictor.provider != CPU_EP:
            report.notes.append(f"{target.label}: {predictor.placement_line()}")
        labelled = _Labelled(predictor, target.backend)
        for row in bench_predictor(labelled, batch_sizes, size, threads, warmup, iters, progress=progress):
            report.rows.append(replace(row, precision=target.precision, agreement=100.0 * parity.top1_agreement,
                                       max_dprob=parity.max_abs_dprob))
        del predictor, labelled


class _Labelled(Predictor):
    """A Predictor shown under another backend name (openvino rather than onnx)."""

    def __init__(self, inner: Predictor, backend: str) -> None:
        self.inner, self.backend, self.info, self.fixed_batch = inner, backend, inner.info, inner.fixed_batch

    @property
    def device(self) -> str:
        return self.inner.device

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.run(images)


def check_parity(rows: Sequence[BenchRow], min_agreement: float | None = None) -> list[str]:
    """bench --verify: one line per backend whose outputs differ from the reference's beyond the tolerance of its
    precision (`fgcli.parity.TOLERANCES`; `min_agreement`, in percent, replaces the reduced precisions')."""
    failures: dict[tuple[str, str, str], str] = {}
    for r in rows:
        if r.agreement is None or r.max_dprob is None:
            continue
        parity = Parity(num_images=0, max_abs_dprob=r.max_dprob, top1_agreement=r.agreement / 100.0, inputs="")
        problem = failure(parity, r.precision, gpu="cuda" in r.device.lower(),
                          min_agreement=None if min_agreement is None else min_agreement / 100.0)
        if problem is not None:
            failures[(r.backend, r.device, r.precision)] = f"{_label(r)} {r.precision}: {problem}"
    return list(failures.values())


def _check_size(requested: int | None, exported: int, path: Path) -> int:
    if requested is not None and requested != exported:
        raise UserError(f"--img-size {requested}: {path} was exported for {exported}x{exported} inputs. Re-export "
                        f"with `fgcli export CHECKPOINT --onnx --img-size {requested}` or drop --img-size.")
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
    """The table's backend cell: 'torch cpu', 'onnx CPU', 'onnx CUDA', 'openvino'."""
    device = r.device.removeprefix("onnxruntime ").removeprefix("torch ").replace("ExecutionProvider", "")
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
