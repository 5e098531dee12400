"""Every option of the model tasks (eval, predict, bench, export, calibrate, attention-viz), each declared once.

A task takes one of these dataclasses; its `fgcli <command>` builds it from the flags and `fgcli.api` from
keyword arguments (`build`), and both pass it through unchanged. Light: no torch, no numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fgcli.errors import UserError, closest

T = TypeVar("T")


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    """A comma-separated string or a sequence of names -> a list of stripped names (None when empty)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [p.strip() for p in parts if p.strip()]
    return names or None


@dataclass
class LoadOptions:
    """How a model file is loaded to predict (`fgcli.formats.load_predictor`); each format honours its own
    (`--providers` an ONNX file, `--precision` OpenVINO) and refuses the others with one line."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    providers: list[str] | None = None  # onnxruntime providers or aliases (cpu, cuda, tensorrt, openvino)
    threads: int | None = None  # the runtime's intra-op threads (None: its own default)
    ema: bool = True  # a checkpoint's EMA weights when it has them
    calibration: bool = True  # calibrated probabilities (the model's fitted temperature)
    tta: str | None = None  # "flip": average the image and its mirror
    precision: str | None = None  # OpenVINO's inference precision: fp32 (default) or bf16

    def __post_init__(self) -> None:
        self.providers = _names(self.providers)
        if self.tta is not None and str(self.tta).strip().lower() in ("", "none", "off"):
            self.tta = None

    def load_options(self) -> LoadOptions:
        """Only the loading options (of a task's options that extend these)."""
        return LoadOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoadOptions)})


@dataclass
class EvalOptions(LoadOptions):
    """`fgcli eval MODEL`."""

    data: str | None = None  # None: the data the run was trained on (a checkpoint records it)
    split: str = "test"
    batch_size: int = 64
    out: str | Path | None = None  # the report folder (default runs/eval/<run name>)
    workers: int | None = None  # loader workers (None: the run's)
    ood: str | Path | None = None  # images of other classes (a folder, or a prepared data set)
    confusions: int = 5  # most-confused class pairs reported and drawn in confusions.html (0: none)


@dataclass
class PredictOptions(LoadOptions):
    """`fgcli predict MODEL SOURCE...`."""

    topk: int = 5
    batch_size: int = 32
    out: str | Path | None = None  # a .csv or .json file
    workers: int = 4  # threads decoding images
    reject: bool = False  # 'unknown' below the model's rejection threshold


@dataclass
class BenchOptions:
    """`fgcli bench MODEL`."""

    backends: list[str] | None = None  # formats to time (torch, onnx, openvino); None: all MODEL has
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    img_size: int | None = None
    warmup: int = 3
    iters: int = 20
    threads: int | None = None  # every runtime's threads (None: torch's)
    device: str = "auto"
    providers: list[str] | None = None  # onnxruntime providers, each timed on its own; "all": those usable
    ema: bool = True
    precisions: list[str] | None = None  # OpenVINO precisions (None: fp32 and bf16)
    checkpoint: str | Path | None = None  # the .pt a non-checkpoint MODEL came from (torch eager, reference)
    images: str | Path | None = None  # a folder to compare top-1 on (None: seeded random inputs)
    max_images: int = 64
    verify: bool = False  # record the backends outside the parity tolerance in `failures`
    min_agreement: float | None = None  # percent, replaces the reduced precisions' agreement

    def __post_init__(self) -> None:
        self.backends = _names(self.backends)
        self.providers = _names(self.providers)
        self.precisions = _names(self.precisions)
        self.batch_sizes = [int(b) for b in self.batch_sizes]


@dataclass
class ExportOptions:
    """`fgcli export CHECKPOINT --format ...` (None = the checkpoint's / exporter's default)."""

    # the formats to write (`fgcli.formats`: onnx, openvino, ...), a list or comma-separated
    format: str | list[str] = "onnx"
    out: Path | None = None  # the first format's file; the others go beside it under the same stem
    opset: int | None = None
    img_size: int | None = None
    dynamic_batch: bool = True
    fp16: bool = False  # also each format's fp16 variant (refused when none of them has one)
    int8: bool = False  # also each format's int8 variant
    verify: bool = True
    ema: bool = True
    exporter: str | None = "auto"  # auto | dynamo | torchscript (None: auto)
    calibration: bool = True  # probs divided by the checkpoint's fitted temperature (when it has one)
    tta: str | None = None  # "flip": the graph also runs the mirrored image and averages the probabilities
    providers: list[str] | None = None  # onnxruntime providers for the checks
    device: str = "cpu"  # where the checks run (cpu keeps the fp32 tolerance meaningful)
    threads: int | None = None
    verify_images: int = 16
    calib_images: int = 128
    calib_method: str = "percentile"
    int8_eval_images: int | None = None  # None = the whole validation split
    # int8 losing more than this many top-1 points on the validation split: keep the first weight layers in fp32
    # (1, 2, 4, ... from the input) until it does not; None = quantize once, never search
    int8_max_drop: float | None = 0.5
    # int8 weights: "8", or "7" (onnxruntime's reduce_range: no 16-bit saturation on CPUs without VNNI)
    int8_weights: str = "8"
    bench_batches: tuple[int, ...] = (1, 8)
    bench_iters: int = 10

    def __post_init__(self) -> None:
        self.format = _names(self.format) or []
        self.providers = _names(self.providers)
        self.exporter = self.exporter or "auto"
        if self.out is not None:
            self.out = Path(self.out)
        if self.tta is not None and str(self.tta).strip().lower() in ("", "none", "off"):
            self.tta = None


@dataclass
class CalibrateOptions:
    """`fgcli calibrate RUN_OR_CHECKPOINT`."""

    data: str | None = None
    split: str = "val"
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    ema: bool = True
    out: str | Path | None = None  # write the calibrated checkpoint here instead of in place
    reject_recall: float | None = None  # the share of val images the rejection threshold keeps


@dataclass
class VizOptions:
    """`fgcli attention-viz CHECKPOINT [IMAGES]`."""

    data: str | None = None
    split: str = "test"
    num: int = 8
    out: str | Path | None = None
    alpha: float = 0.5
    layout: str = "grid"  # grid | single
    score: bool = False
    score_num: int | None = None
    device: str = "auto"
    ema: bool = True
    batch_size: int = 8
    calibration: bool = True


def build(cls: type[T], options: T | None, changes: dict[str, Any], caller: str) -> T:
    """`options` (default: `cls()`) with `changes` applied; an unknown name is one line with the closest one."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(k for k in changes if k not in names)
    if unknown:
        raise UserError(f"{caller}() got unknown option {unknown[0]!r}.{closest(unknown[0], names)} Valid: "
                        f"{', '.join(names)}.")
    if options is not None and not isinstance(options, cls):
        raise UserError(f"{caller}() takes options={cls.__name__}(...), not {type(options).__name__}.")
    base = options if options is not None else cls()
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[type-var]
