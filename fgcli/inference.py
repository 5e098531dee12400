"""The predictors: a checkpoint on torch, an exported `.onnx` file on onnxruntime, and the base of every exported
file (`ExportedPredictor`); `fgcli.formats` says which format a file is and builds its predictor.

A Predictor maps a batch of preprocessed images (N x 3 x H x W float32, normalised as `info.preprocess`
says) to fused logits and probabilities. onnxruntime providers are chosen explicitly: CUDA only when
torch sees a usable GPU *and* the session really runs on CUDAExecutionProvider (onnxruntime-gpu lists CUDA
even on machines without one), else CPU. OpenVINO runs through onnxruntime as a plugin execution provider
(`pip install "fgcli[openvino]"`), at the precision asked (`INFERENCE_PRECISION_HINT`), with onnxruntime's CPU
provider taking the nodes it does not; every session records where its nodes ran (`node_placement`).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.console import log, settings
from fgcli.device import check_device, cuda_usable, device_index
from fgcli.errors import UserError, unknown_choice
from fgcli.modelinfo import ModelInfo

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
OPENVINO_EP = "OpenVINOExecutionProvider"
_ALIASES = {"cpu": CPU_EP, "cuda": CUDA_EP, "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
            "openvino": OPENVINO_EP, "ov": OPENVINO_EP, "dml": "DmlExecutionProvider"}

#: inference precisions (`--precision`): fp32 everywhere; bf16 on OpenVINO (AVX-512 BF16 / AMX CPUs)
PRECISIONS = ("fp32", "bf16")
_PRECISION_ALIASES = {"fp32": "fp32", "f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
#: OpenVINO's name of each precision (its INFERENCE_PRECISION_HINT property)
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}
OPENVINO_INSTALL = 'pip install "fgcli[openvino]"'
_OPENVINO_REGISTRATION = "fgcli_openvino"
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_precision(precision: str | None) -> str:
    """A --precision value (fp32 / f32 / bf16, any case) -> 'fp32' or 'bf16' (None -> 'fp32')."""
    if precision is None:
        return "fp32"
    name = _PRECISION_ALIASES.get(precision.strip().lower())
    if name is None:
        raise UserError(f"--precision {precision} is not valid; use f32 (fp32) or bf16.")
    return name


def bf16_supported() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), so OpenVINO can run a model in bf16."""
    from fgcli.cpu import cpu_info

    return cpu_info().native_bf16


def effective_precision(precision: str | None, openvino: bool) -> str:
    """The precision a session will run at: bf16 needs OpenVINO (else an error) and a CPU with AVX-512 BF16 or
    AMX (else one warning line and fp32)."""
    precision = check_precision(precision)
    if precision == "fp32":
        return precision
    if not openvino:
        raise UserError(f"--precision {precision} runs on OpenVINO only: add --providers openvino "
                        f"({OPENVINO_INSTALL}); onnxruntime's other providers run the file's own precision.")
    if not bf16_supported():
        log.warning(f"--precision {precision}: this CPU has neither AVX-512 BF16 nor AMX ({' / '.join(_BF16_FLAGS)} "
                    "flags); running OpenVINO in fp32")
        return "fp32"
    return precision


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (one sentence naming the fix), or None when its plugin is usable."""
    try:
        openvino_device()
    except UserError as e:
        return str(e)
    return None


def openvino_device() -> Any:
    """The OpenVINO plugin's CPU device for `SessionOptions.add_provider_for_devices` (the plugin library is
    registered with onnxruntime once per process)."""
    import onnxruntime as ort

    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        raise UserError(f"--providers openvino needs the OpenVINO plugin for onnxruntime: {OPENVINO_INSTALL} "
                        "(installs onnxruntime-ep-openvino).") from None
    if not hasattr(ort, "register_execution_provider_library"):
        raise UserError(f"the OpenVINO plugin needs onnxruntime >= 1.23 (this is {ort.__version__}): "
                        "pip install -U onnxruntime-gpu (or onnxruntime).")
    name = plugin.get_ep_name()

    def cpu_devices() -> list[Any]:
        return [d for d in ort.get_ep_devices() if d.ep_name == name and d.ep_metadata.get("ov_device") == "CPU"]

    devices = cpu_devices()
    if not devices:
        try:
            ort.register_execution_provider_library(_OPENVINO_REGISTRATION, plugin.get_library_path())
        except Exception as e:  # registered already under another name, or a library that does not load
            if "already registered" not in str(e):
                text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise UserError(f"onnxruntime cannot load the OpenVINO plugin ({text}). Reinstall it: "
                                f"{OPENVINO_INSTALL}.") from e
        devices = cpu_devices()
    if not devices:
        raise UserError("the OpenVINO plugin for onnxruntime found no CPU device on this machine (it lists none on "
                        "some CPUs, e.g. AMD); use --providers cpu, or export the OpenVINO IR (`fgcli export "
                        "CHECKPOINT --format openvino`), which runs on OpenVINO's own runtime on any x86 CPU.")
    return devices[0]


def openvino_options(precision: str, threads: int | None) -> dict[str, str]:
    """The OpenVINO provider options: precision (and threads) as OpenVINO CPU properties in `load_config`."""
    props = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]}
    if threads:
        props["INFERENCE_NUM_THREADS"] = str(int(threads))
    return {"load_config": json.dumps({"CPU": props})}


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


@dataclass
class Placement:
    """Where a session's nodes run: node count and node types per provider, compiled subgraphs per provider."""

    nodes: dict[str, int] = field(default_factory=dict)
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    subgraphs: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.nodes.values())

    def line(self, main: str) -> str:
        """'node placement: ...' for a session whose first provider is `main`."""
        taken = self.nodes.get(main, 0)
        groups = self.subgraphs.get(main, 0)
        where = f" in {groups} subgraph{'s' if groups != 1 else ''}" if main != CPU_EP and groups else ""
        if taken == self.total:
            return f"node placement: all {self.total} nodes on {_short(main)}{where}"
        rest = []
        for provider, count in self.nodes.items():
            if provider == main:
                continue
            ops = sorted(self.ops.get(provider, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{op} {n}" for op, n in ops[:8]) + (", ..." if len(ops) > 8 else "")
            rest.append(f"{_short(provider)} {count} ({shown})")
        return f"node placement: {_short(main)} {taken} of {self.total} nodes{where}; " + "; ".join(rest)


def node_placement(session: Any) -> Placement | None:
    """How many nodes (of which types) each provider of `session` runs, from onnxruntime's graph assignment
    record (sessions from `create_session` keep one); None where onnxruntime cannot tell (older than 1.23)."""
    try:
        assigned = session.get_provider_graph_assignment_info()
    except Exception:
        return None
    placement = Placement()
    for subgraph in assigned:
        nodes = list(subgraph.get_nodes())
        ep = str(subgraph.ep_name)
        placement.nodes[ep] = placement.nodes.get(ep, 0) + len(nodes)
        placement.subgraphs[ep] = placement.subgraphs.get(ep, 0) + 1
        ops = placement.ops.setdefault(ep, {})
        for op, n in Counter(str(node.op_type) for node in nodes).items():
            ops[op] = ops.get(op, 0) + n
    return placement if placement.nodes else None


def provider_name(name: str) -> str:
    """A provider alias (cpu, cuda, tensorrt, openvino, ...) -> onnxruntime's full name; others unchanged."""
    return _ALIASES.get(name.strip().lower(), name.strip())


def wants_openvino(providers: Sequence[str] | None) -> bool:
    """Whether a --providers list asks for OpenVINO."""
    return any(provider_name(p) == OPENVINO_EP for p in providers or ())


def resolve_providers(providers: Sequence[str] | None = None, device: str = "auto") -> list[Any]:
    """The explicit onnxruntime provider list for `device`, or the user's `providers` (names or aliases)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        chosen = []
        for name in providers:
            full = provider_name(name)
            if full == OPENVINO_EP:
                openvino_device()  # the plugin is there (else one line naming the package)
            elif full not in available:
                raise unknown_choice("onnxruntime provider", full, {*available, OPENVINO_EP})
            chosen.append(full)
        chosen = list(dict.fromkeys(chosen))
        if OPENVINO_EP in chosen and set(chosen) - {OPENVINO_EP, CPU_EP}:
            raise UserError(f"--providers {','.join(providers)}: openvino combines with cpu only (onnxruntime's "
                            "CPU provider runs the nodes OpenVINO does not take).")
        return chosen
    device = check_device(device)
    if device == "cpu":
        return [CPU_EP]
    usable = CUDA_EP in available and cuda_usable()
    if not usable:
        if device.startswith("cuda"):
            raise UserError(f"--device {device}: no usable CUDA GPU for onnxruntime (torch sees none, or "
                            "onnxruntime-gpu lacks CUDA). Use --device cpu.")
        return [CPU_EP]
    return [(CUDA_EP, {"device_id": device_index(device)}), CPU_EP]


def session_options(threads: int | None = None) -> Any:
    """Session options: graph optimisation ALL, sequential execution, `threads` intra-op threads (None = ORT's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not settings.debug:
        options.log_severity_level = 3  # onnxruntime's own warnings (e.g. a CUDA EP that failed to load)
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")  # for node_placement
    return options


def create_session(path: str | Path, providers: Sequence[str] | None = None, device: str = "auto",
                   threads: int | None = None, precision: str | None = None) -> Any:
    """An onnxruntime InferenceSession on the providers chosen by `resolve_providers`, checked after creation.

    `precision` (fp32 / bf16) applies to OpenVINO, which is added through its plugin's CPU device (a plain
    provider name would silently fall back to CPU) and must be the provider in use once the session exists."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist. Check the path, or export one with `fgcli export`.")
    chosen = resolve_providers(providers, device)
    names = [p[0] if isinstance(p, tuple) else p for p in chosen]
    openvino = OPENVINO_EP in names
    precision = effective_precision(precision, openvino)
    wants_cuda = CUDA_EP in names
    if wants_cuda and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):  # CUDA/cuDNN from the nvidia-* wheels torch installed, if any
            ort.preload_dlls()
    if not settings.debug:
        ort.set_default_logger_severity(3)
    options = session_options(threads)
    if openvino:
        options.add_provider_for_devices([openvino_device()], openvino_options(precision, threads))
    try:
        if openvino:  # the CPU provider is always there for the nodes OpenVINO does not take
            session = ort.InferenceSession(str(path), options)
        else:
            session = ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if openvino and path.stat().st_size and _loads_on_cpu(path):
            raise UserError(f"OpenVINO cannot compile {path} ({text}); run it with --providers cpu, or rerun with "
                            "--debug for details.") from e
        raise UserError(f"onnxruntime cannot load {path} ({text}); the file may be truncated or corrupt. "
                        "Re-export it with `fgcli export CHECKPOINT --onnx`.") from e
    active = session.get_providers()[0]
    if openvino and active != OPENVINO_EP:
        raise UserError(f"onnxruntime did not start {OPENVINO_EP} for {path} (it runs on {active}); rerun with "
                        f"--debug for details, or use --providers cpu.")
    if wants_cuda and active != CUDA_EP:
        if providers or device.startswith("cuda"):
            raise UserError(f"onnxruntime could not start {CUDA_EP} for {path} (missing CUDA/cuDNN libraries for "
                            "onnxruntime-gpu; rerun with --debug for details). Use --device cpu.")
        log.warning(f"a GPU is visible but onnxruntime could not use {CUDA_EP}; running on {active}")
    return session


def _loads_on_cpu(path: Path) -> bool:
    """Whether onnxruntime's CPU provider loads `path` (to tell an OpenVINO failure from a corrupt file)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), session_options(1), providers=[CPU_EP])
    except Exception:
        return False
    return True


class Predictor:
    """Fused logits and probabilities for batches of preprocessed images."""

    backend: str = ""
    info: ModelInfo
    #: a fixed batch size the model only accepts (static-batch ONNX), else None
    fixed_batch: int | None = None
    #: the model's fitted temperature (None: it has none); `calibrated`: whether `probs` are divided by it
    temperature: float | None = None
    calibrated: bool = False
    #: the test-time augmentation applied ('flip') or None
    tta: str | None = None
    #: the inference precision (fp32; bf16 on OpenVINO when asked)
    precision: str = "fp32"
    #: the stored rejection threshold on the top-1 calibrated probability (threshold, recall, ...) or None, and
    #: why there is none (the one-line error `--reject` gives)
    reject: dict[str, Any] | None = None
    reject_missing: str = ""

    @property
    def device(self) -> str:
        """Where it runs, in words (e.g. 'onnxruntime CPUExecutionProvider', 'torch cpu')."""
        raise NotImplementedError

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probs) as float32 arrays N x C for a float32 batch N x 3 x H x W."""
        raise NotImplementedError

    def calibration_note(self) -> str:
        """One line saying which probabilities are shown (see `fgcli.engine.fused`)."""
        return calibration_note(self.temperature, self.calibrated, self.tta)

    def reject_threshold(self) -> float:
        """The stored rejection threshold; a one-line error saying how to fit one when there is none."""
        if self.reject is None:
            raise UserError(self.reject_missing or "this model has no rejection threshold.")
        return float(self.reject["threshold"])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)
        size = self.info.preprocess.img_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise UserError(f"the model expects N x 3 x {size} x {size} images, got {tuple(images.shape)}.")
        if self.fixed_batch is None or len(images) == self.fixed_batch:
            return self.run(images)
        parts = [self._run_padded(images[i:i + self.fixed_batch]) for i in range(0, len(images), self.fixed_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _run_padded(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(chunk)
        assert self.fixed_batch is not None
        if n < self.fixed_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.fixed_batch - n, axis=0)])
        logits, probs = self.run(chunk)
        return logits[:n], probs[:n]


class ExportedPredictor(Predictor):
    """A file written by `fgcli export` (ONNX, OpenVINO IR): one input `images`, outputs `logits` and `probs`, and
    fgcli's metadata (classes, preprocessing, temperature, rejection threshold, TTA in the graph, the run's data
    settings). A format's predictor opens its runtime, then calls `_read_metadata`; it runs one view in
    `_run_graph`."""

    #: the file's format name (fgcli.formats) and where it came from
    format: str = ""
    path: Path

    def _read_metadata(self, props: dict[str, str], inputs: list[str], batch_dim: Any, outputs: list[str],
                       calibration: bool, tta: str | None) -> None:
        """Classes, preprocessing, calibration and TTA from the file's metadata; one-line errors for a file that
        is not an fgcli export. `calibration` False: probs = softmax(logits), the uncalibrated ones. `tta` 'flip':
        run the mirrored images too and average (done by the graph itself when it was exported with --tta)."""
        from fgcli.engine.fused import check_tta

        self.info = ModelInfo.from_props(props, source=str(self.path))
        if inputs != ["images"]:
            raise UserError(f"{self.path} has inputs {inputs}, expected one input 'images'. Re-export it with "
                            "`fgcli export`.")
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        if outputs[:2] != ["logits", "probs"]:
            raise UserError(f"{self.path} has outputs {outputs}, expected logits and probs. Re-export it.")
        stored = self.info.extra.get("temperature")
        self.temperature = float(stored) if stored else None
        self.calibrated = bool(calibration and self.temperature)
        self.graph_tta = check_tta(self.info.extra.get("tta"))
        self._raw = not calibration and self.temperature is not None  # the graph's probs are calibrated
        stored = self.info.extra.get("reject_threshold")
        record = {"threshold": float(stored), "recall": _float(self.info.extra.get("reject_recall"))} \
            if stored else None
        self.reject, self.reject_missing = reject_state(
            record, self.calibrated, self.temperature,
            f"{self.path} has no rejection threshold in its metadata: fit one on the validation split with `fgcli "
            "calibrate CHECKPOINT` (--reject-recall sets the share of in-distribution images kept), then export "
            "again.")
        self._extra_views = check_tta(tta) if self.graph_tta is None else None
        self.tta = self.graph_tta or self._extra_views

    def calibration_fit(self) -> dict[str, Any] | None:
        """The checkpoint's temperature fit the file carries (metadata `calibration`), or None."""
        text = self.info.extra.get("calibration")
        return json.loads(text) if text else None

    def data_settings(self) -> dict[str, Any]:
        """The run's `data` config section (metadata `data_config`): eval carves the same splits."""
        return json.loads(self.info.extra.get("data_config", "{}"))

    def report_fields(self) -> dict[str, Any]:
        """What eval's metrics.json says about the model."""
        return {"model": str(self.path), "format": self.format, "precision": self.info.precision,
                "inference_precision": self.precision, "source_checkpoint_sha256": self.info.source_sha256,
                "tta_in_graph": self.graph_tta or "none"}

    def placement_line(self) -> str | None:
        """Where the graph's nodes ran, in one line (None: the runtime runs all of it itself)."""
        return None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from fgcli.engine.fused import combine_views, tta_views

        views = [self._outputs(view) for view in tta_views(images, self._extra_views)]
        if len(views) == 1:
            return views[0]
        # the graph's probs are softmax(logits / T) (T = 1 when uncalibrated): the views combine from the logits
        return combine_views([logits for logits, _ in views], self.temperature if self.calibrated else 1.0)

    def _outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self._run_graph(images)
        logits = np.asarray(logits, dtype=np.float32)
        if self._raw:
            probs = softmax(logits)
        return logits, np.asarray(probs, dtype=np.float32)

    def _run_graph(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's (logits, probs) for one view."""
        raise NotImplementedError


class OnnxPredictor(ExportedPredictor):
    """An exported `.onnx` file on onnxruntime; classes and preprocessing come from its metadata."""

    backend = "onnx"
    format = "onnx"

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, device: str = "auto",
                 threads: int | None = None, calibration: bool = True, tta: str | None = None,
                 precision: str | None = None) -> None:
        """`calibration` / `tta`: see `ExportedPredictor._read_metadata`. `precision` fp32 / bf16: OpenVINO's
        inference precision (bf16 falls back to fp32, with a warning, on CPUs without AVX-512 BF16 / AMX)."""
        self.path = Path(path)
        #: the inference precision in use (OpenVINO's hint; other providers run the file's own precision)
        self.precision = effective_precision(precision, wants_openvino(providers))
        self.session = create_session(self.path, providers=providers, device=device, threads=threads,
                                      precision=self.precision)
        inputs = self.session.get_inputs()
        self._read_metadata(self.session.get_modelmeta().custom_metadata_map, [i.name for i in inputs],
                            inputs[0].shape[0] if inputs else None, [o.name for o in self.session.get_outputs()],
                            calibration, tta)
        self.format = {"fp16": "onnx-fp16", "int8": "onnx-int8"}.get(self.info.precision, "onnx")

    @property
    def provider(self) -> str:
        """The execution provider actually in use."""
        return str(self.session.get_providers()[0])

    @property
    def device(self) -> str:
        if self.provider == OPENVINO_EP:
            return f"onnxruntime {self.provider} ({self.precision})"
        return f"onnxruntime {self.provider}"

    @property
    def placement(self) -> Placement | None:
        """How many nodes each provider runs (None where onnxruntime cannot tell)."""
        return node_placement(self.session)

    @property
    def mixed(self) -> bool:
        """Whether the session has several providers (OpenVINO or a GPU, with the CPU provider behind it)."""
        return len(self.session.get_providers()) > 1

    def placement_line(self) -> str:
        """'node placement: ...' in one line (or a line saying it is unknown)."""
        placement = self.placement
        if placement is None:
            return "node placement: unknown (onnxruntime < 1.23 does not report it)"
        return placement.line(self.provider)

    def _run_graph(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probs"], {"images": images})
        return logits, probs


class TorchPredictor(Predictor):
    """A checkpoint's model in torch eager mode (EMA weights when the checkpoint has them and `use_ema`)."""

    backend = "torch"
    format = "torch"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 use_ema: bool = True, *, loaded: Any = None, info: ModelInfo | None = None,
                 calibration: bool = True, tta: str | None = None) -> None:
        """`loaded`: an already loaded model (fgcli.engine.checkpoint.load_model) instead of reading `path`;
        `info`: another description of it (e.g. export's, at the export input size). `calibration` False: the
        uncalibrated probabilities; `tta` 'flip': average the image and its mirror (fgcli.engine.fused)."""
        import torch

        from fgcli.engine.calibration import stored_reject, stored_temperature
        from fgcli.engine.checkpoint import load_model
        from fgcli.engine.fused import FusedPrediction

        if threads:
            torch.set_num_threads(int(threads))
        self.path = Path(path)
        self.loaded = loaded if loaded is not None else load_model(self.path, device=device, use_ema=use_ema)
        self.ckpt = self.loaded.checkpoint
        self.model = self.loaded.model
        self.torch_device = self.loaded.device
        self.info = info if info is not None else self.loaded.info
        self.temperature = stored_temperature(self.ckpt)
        self.calibrated = bool(calibration and self.temperature)
        self.fused = FusedPrediction(self.model, self.temperature if self.calibrated else 1.0, tta)
        self.tta = self.fused.tta
        self.reject, self.reject_missing = reject_state(
            stored_reject(self.ckpt), self.calibrated, self.temperature,
            f"{self.path} has no rejection threshold: fit one on the validation split with `fgcli calibrate "
            f"{self.path}` (--reject-recall sets the share of in-distribution images kept, default 0.95).")

    @property
    def device(self) -> str:
        return f"torch {self.torch_device}"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.torch_device)
            logits, probs = self.fused(x)
        return logits.float().cpu().numpy(), probs.float().cpu().numpy()


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def reject_state(record: dict[str, Any] | None, calibrated: bool, temperature: float | None,
                 missing: str) -> tuple[dict[str, Any] | None, str]:
    """(the rejection threshold in use, or None; why there is none). The threshold was chosen on calibrated
    probabilities, so it applies only when they are shown."""
    if record is None:
        return None, missing
    if not calibrated:
        why = ("--no-calibration" if temperature else "the model has no fitted temperature")
        return None, (f"--reject compares the calibrated top-1 probability with the stored threshold, but {why}: "
                      "drop --no-calibration (or refit with `fgcli calibrate`).")
    return dict(record), ""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64, returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def calibration_note(temperature: float | None, calibrated: bool, tta: str | None = None) -> str:
    """Which probabilities a user sees, in one line."""
    flip = ", averaged with the mirrored image (--tta flip)" if tta else ""
    if calibrated:
        return f"probabilities calibrated (temperature {temperature:.3f}){flip}"
    if temperature:
        return f"probabilities uncalibrated (--no-calibration; the fitted temperature is {temperature:.3f}){flip}"
    return ("note: this model has no fitted temperature (trained before calibration, or without a validation "
            f"split): probabilities are uncalibrated{flip}. Fit one with `fgcli calibrate CHECKPOINT`.")
