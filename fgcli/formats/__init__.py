"""The format registry: one entry per model format a file can hold (in the spirit of ultralytics'
`export_formats()` table and timm's registries).

Each `ModelFormat` says its name (what `fgcli export --format` takes), its file suffixes, the precision the file
stores, the runtime that runs it and the pip extra that installs that runtime, its writer (`fgcli export`), its
predictor (`eval`, `predict`, `bench`), which `LoadOptions` it honours (`--providers`, `--precision`), what it
can show (per-head scores and attention maps: the checkpoint only) and its parity tolerance (the row of
`fgcli.parity.TOLERANCES` for its precision). Every command that takes a model file asks `resolve` which format
it is; nothing else tests a suffix.

The built-in formats live in `fgcli/formats/<module>.py` (`BUILTIN_MODULES`), each registering its entries with
`register_format`; they are imported on first use, so `fgcli --help` stays light. A new format is one module
plus one line there.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgcli.errors import UserError, unknown_choice

if TYPE_CHECKING:
    from fgcli.inference import Predictor
    from fgcli.modelinfo import ModelInfo
    from fgcli.options import ExportOptions, LoadOptions
    from fgcli.parity import Tolerance

#: the built-in formats' modules (`fgcli/formats/<name>.py` or a package), in the order `fgcli bench` shows them
BUILTIN_MODULES = ("checkpoint", "onnx", "openvino")

_REGISTRY: dict[str, ModelFormat] = {}


@dataclass(frozen=True)
class ModelFormat:
    """One model format: how its files are named, written, loaded, and how closely they must match torch."""

    name: str  # the registry key: torch, onnx, onnx-fp16, onnx-int8, ...
    title: str  # in words, e.g. "ONNX int8"
    family: str  # what `--format` and `bench --backends` name: the variants of one container share it
    precision: str  # the precision the file stores: fp32, fp16, int8
    suffixes: tuple[str, ...]  # file name endings, the one written first; the longest match wins on reading
    runtime: str  # what runs it, in words
    load: Callable[[Path, LoadOptions], Predictor]  # its predictor
    read_info: Callable[[Path], ModelInfo] | None = None  # its metadata, without starting the runtime
    write: Callable[[ExportJob, Path], Any] | None = None  # writes the file (None: not written by fgcli export)
    source: str | None = None  # the family its writer starts from (torch, onnx)
    check: Callable[[ExportJob], None] | None = None  # refuses bad export options before anything is written
    needs_data: bool = False  # its writer reads the run's images (int8 calibration)
    companions: tuple[str, ...] = ()  # suffixes of files that must sit beside it (the weights of an IR)
    modules: tuple[str, ...] = ()  # the Python modules its runtime needs
    extra: str | None = None  # the fgcli extra that installs them (pip install "fgcli[EXTRA]")
    options: frozenset[str] = frozenset()  # the LoadOptions it honours beyond device / threads / calibration / tta
    heads: bool = False  # holds the model itself: per-head scores and attention maps
    fallback: bool = False  # a file of no registered suffix is this format (a checkpoint of any name)
    cpu_only: bool = False  # runs on the CPU only (--device cuda is refused)

    @property
    def tolerance(self) -> Tolerance:
        """What its predictions must meet against torch fp32 (fgcli.parity.TOLERANCES)."""
        from fgcli.parity import tolerance

        return tolerance(self.precision)

    @property
    def suffix(self) -> str:
        """The main file's suffix (what the writer names its file)."""
        return self.suffixes[0]

    def missing_runtime(self) -> str | None:
        """Why its runtime cannot run here (one sentence naming the extra), or None when it is installed."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        install = f'pip install "fgcli[{self.extra}]"' if self.extra else f"pip install {' '.join(absent)}"
        return f"the {self.title} format needs {self.runtime}, which is not installed here: {install}"

    def check_runtime(self, what: str) -> None:
        """A one-line error naming `what` and the extra to install when the runtime is missing."""
        missing = self.missing_runtime()
        if missing is not None:
            raise UserError(f"{what}: {missing}.")

    def path_for(self, base: Path) -> Path:
        """This format's file for `base` (any registered suffix replaced): best.pt -> best.int8.onnx."""
        return base.with_name(stem(base) + self.suffix)


@dataclass
class ExportJob:
    """What a format's writer works from: the checkpoint's model and metadata, the export options, the files
    already written (by format name, under their staged names) and the run's data (int8 calibration)."""

    info: ModelInfo  # the metadata every file carries
    options: ExportOptions
    model: Any = None  # the fused torch Method, eval mode, on the CPU (None when exporting from a file)
    img_size: int = 0
    temperature: float = 1.0  # `probs` are softmax(fused / temperature)
    tta: str | None = None  # flip: the graph runs the mirrored image too
    written: dict[str, Path] = field(default_factory=dict)  # format name -> its (staged) file
    shown: dict[Path, Path] = field(default_factory=dict)  # staged file -> its final name, for messages
    proto: Any = None  # the fp32 ONNX graph (onnx.ModelProto), once written
    dataset: Any = None  # the run's prepared data set, when reachable
    data_where: str = ""  # where that data is, in words
    cache: dict[str, Any] = field(default_factory=dict)  # writers' shared state (e.g. the fp32 file's predictor)
    quiet: bool = False  # temporary files (fgcli bench): the writers say nothing

    def name_of(self, path: Path) -> Path:
        """The final name of a (staged) file."""
        return self.shown.get(path, path)

    def say(self, text: str) -> None:
        """A writer's log line (none for temporary files)."""
        if not self.quiet:
            from fgcli.console import log

            log.info(text)


def register_format(fmt: ModelFormat) -> ModelFormat:
    """Add `fmt` to the registry (a later entry of the same name replaces it)."""
    _REGISTRY[fmt.name] = fmt
    return fmt


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"fgcli.formats.{module}")


def list_formats() -> list[ModelFormat]:
    """Every registered format, in registration order."""
    _load_builtins()
    return list(_REGISTRY.values())


def get_format(name: str) -> ModelFormat:
    """The format registered under `name` (one line listing the valid names otherwise)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise unknown_choice("format", name, _REGISTRY)
    return _REGISTRY[name]


def families() -> list[str]:
    """The format families (what `--format` and `bench --backends` take), in registration order."""
    return list(dict.fromkeys(f.family for f in list_formats()))


def writable_help() -> str:
    """The formats `fgcli export --format` writes, in words (for its --help; light: no runtime is imported)."""
    parts = []
    for family in families():
        main = variant(family, "fp32")
        if main is None or main.write is None:
            continue
        extras = [f"--{f.precision}" for f in list_formats() if f.family == family and f is not main and f.write]
        text = f"{family} ({main.title}, {' + '.join((main.suffix, *main.companions))}"
        text += f"; {' / '.join(extras)} add its variants" if extras else ""
        text += f'; pip install "fgcli[{main.extra}]"' if main.extra else ""
        parts.append(text + ")")
    return ", ".join(parts)


def variant(family: str, precision: str) -> ModelFormat | None:
    """The format of `family` that stores `precision`, or None when the family has no such variant."""
    return next((f for f in list_formats() if f.family == family and f.precision == precision), None)


def stem(path: Path) -> str:
    """A file name without its registered suffix (the longest that matches): best.int8.onnx -> best."""
    name = path.name
    ends = sorted((s for f in list_formats() for s in (*f.suffixes, *f.companions)), key=len, reverse=True)
    for end in ends:
        if name.lower().endswith(end) and len(name) > len(end):
            return name[:-len(end)]
    return path.stem


def format_of(path: str | Path) -> ModelFormat:
    """The format of a file by its name (the longest registered suffix; the fallback format for any other)."""
    name = Path(path).name.lower()
    best: tuple[int, ModelFormat] | None = None
    for fmt in list_formats():
        for end in (*fmt.suffixes, *fmt.companions):
            if name.endswith(end) and (best is None or len(end) > best[0]):
                best = (len(end), fmt)
    if best is not None:
        return best[1]
    return next(f for f in list_formats() if f.fallback)


def resolve(path: str | Path) -> tuple[ModelFormat, Path]:
    """(format, main file) of an existing model file; one line for a missing file or a missing companion (an
    OpenVINO IR's `.xml` without its `.bin`, or the reverse)."""
    path = Path(path)
    fmt = format_of(path)
    main = path if path.name.lower().endswith(fmt.suffixes) else path.with_name(stem(path) + fmt.suffix)
    if not path.exists():
        raise UserError(f"model file {path} does not exist. Give a checkpoint (.pt) or an exported model "
                        f"({', '.join(s for f in list_formats() if not f.fallback for s in f.suffixes[:1])}).")
    if main != path and not main.is_file():
        raise UserError(f"{path} is the {', '.join(fmt.companions)} part of an {fmt.title} model, but its "
                        f"{main.name} is missing beside it: keep both files together, or export again with "
                        f"`fgcli export CHECKPOINT --format {fmt.family}`.")
    for end in fmt.companions:
        beside = main.with_name(stem(main) + end)
        if not beside.is_file():
            raise UserError(f"{main} is an {fmt.title} model, but its {end} file ({beside.name}) is missing beside "
                            f"it: keep both files together, or export again with `fgcli export CHECKPOINT --format "
                            f"{fmt.family}`.")
    return fmt, main


def _takers(option: str) -> str:
    """The formats that honour `option`, by their main suffix: '.onnx models' / '.onnx and .xml models'."""
    mains = [variant(family, "fp32") for family in families()]
    return " and ".join(f.suffix for f in mains if f is not None and option in f.options) + " models"


def check_options(fmt: ModelFormat, options: LoadOptions) -> None:
    """One line for a loading option this format cannot honour (`--providers` on a checkpoint, ...)."""
    from fgcli.device import check_device
    from fgcli.inference import check_precision

    if options.providers and "providers" not in fmt.options:
        use = "for a checkpoint use --device" if fmt.heads else f"an {fmt.title} model runs on {fmt.runtime}"
        raise UserError(f"--providers applies to {_takers('providers')} only; {use}.")
    precision = check_precision(options.precision)
    if precision != "fp32" and "precision" not in fmt.options:
        subject = "a checkpoint" if fmt.heads else f"an {fmt.title} model"
        raise UserError(f"--precision {options.precision} is OpenVINO's inference precision: it applies to "
                        f"{_takers('precision')} (an .onnx on --providers openvino); {subject} runs in "
                        f"{fmt.precision} on {fmt.runtime}.")
    if fmt.cpu_only and check_device(options.device).startswith("cuda"):
        raise UserError(f"--device {options.device}: an {fmt.title} model runs on {fmt.runtime} on the CPU; use "
                        "--device cpu (or auto).")


def load_predictor(path: str | Path, options: LoadOptions | None = None) -> Predictor:
    """A Predictor for any registered model file (one line for a missing file or companion, a runtime that is not
    installed, or an option the format cannot honour)."""
    from fgcli.options import LoadOptions

    options = options or LoadOptions()
    fmt, main = resolve(path)
    fmt.check_runtime(str(path))
    check_options(fmt, options)
    return fmt.load(main, options)
