"""Inference over a checkpoint (torch) or an exported `.onnx` file (onnxruntime): shared by predict, eval, bench.

A Predictor maps a batch of preprocessed images (N x 3 x H x W float32, normalised as `info.preprocess`
says) to fused logits and probabilities. onnxruntime providers are chosen explicitly: CUDA only when
torch sees a usable GPU *and* the session really runs on CUDAExecutionProvider (onnxruntime-gpu lists CUDA
even on machines without one), else CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.console import log, settings
from fgcli.device import check_device, cuda_usable, device_index
from fgcli.errors import UserError, unknown_choice
from fgcli.modelinfo import ModelInfo

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
_ALIASES = {"cpu": CPU_EP, "cuda": CUDA_EP, "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
            "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider"}


def resolve_providers(providers: Sequence[str] | None = None, device: str = "auto") -> list[Any]:
    """The explicit onnxruntime provider list for `device`, or the user's `providers` (names or aliases)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        chosen = []
        for name in providers:
            full = _ALIASES.get(name.strip().lower(), name.strip())
            if full not in available:
                raise unknown_choice("onnxruntime provider", full, available)
            chosen.append(full)
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
    return options


def create_session(path: str | Path, providers: Sequence[str] | None = None, device: str = "auto",
                   threads: int | None = None) -> Any:
    """An onnxruntime InferenceSession on the providers chosen by `resolve_providers`, checked after creation."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist. Check the path, or export one with `fgcli export`.")
    chosen = resolve_providers(providers, device)
    wants_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA_EP for p in chosen)
    if wants_cuda and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):  # CUDA/cuDNN from the nvidia-* wheels torch installed, if any
            ort.preload_dlls()
    if not settings.debug:
        ort.set_default_logger_severity(3)
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=chosen)
    except Exception as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"onnxruntime cannot load {path} ({text}); the file may be truncated or corrupt. "
                        "Re-export it with `fgcli export CHECKPOINT --onnx`.") from e
    active = session.get_providers()[0]
    if wants_cuda and active != CUDA_EP:
        if providers or device.startswith("cuda"):
            raise UserError(f"onnxruntime could not start {CUDA_EP} for {path} (missing CUDA/cuDNN libraries for "
                            "onnxruntime-gpu; rerun with --debug for details). Use --device cpu.")
        log.warning(f"a GPU is visible but onnxruntime could not use {CUDA_EP}; running on {active}")
    return session


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


class OnnxPredictor(Predictor):
    """An exported `.onnx` file on onnxruntime; classes and preprocessing come from its metadata."""

    backend = "onnx"

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, device: str = "auto",
                 threads: int | None = None, calibration: bool = True, tta: str | None = None) -> None:
        """`calibration` False: probs = softmax(logits), the uncalibrated ones. `tta` 'flip': run the mirrored
        images too and average (done by the graph itself when it was exported with --tta flip)."""
        from fgcli.engine.fused import check_tta

        self.path = Path(path)
        self.session = create_session(self.path, providers=providers, device=device, threads=threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_props(props, source=str(self.path))
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != ["images"]:
            raise UserError(f"{self.path} has inputs {[i.name for i in inputs]}, expected one input 'images'. "
                            "Re-export it with `fgcli export`.")
        batch_dim = inputs[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self._outputs = [o.name for o in self.session.get_outputs()]
        if self._outputs[:2] != ["logits", "probs"]:
            raise UserError(f"{self.path} has outputs {self._outputs}, expected logits and probs. Re-export it.")
        stored = self.info.extra.get("temperature")
        self.temperature = float(stored) if stored else None
        self.calibrated = bool(calibration and self.temperature)
        self.graph_tta = check_tta(self.info.extra.get("tta"))
        self._raw = not calibration and self.temperature is not None  # the graph's probs are calibrated
        self._extra_views = check_tta(tta) if self.graph_tta is None else None
        self.tta = self.graph_tta or self._extra_views

    @property
    def provider(self) -> str:
        """The execution provider actually in use."""
        return str(self.session.get_providers()[0])

    @property
    def device(self) -> str:
        return f"onnxruntime {self.provider}"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        views = [self._run_graph(images)]
        if self._extra_views == "flip":
            views.append(self._run_graph(np.ascontiguousarray(images[..., ::-1])))
        return combine_view_arrays(views)

    def _run_graph(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probs"], {"images": images})
        logits = np.asarray(logits, dtype=np.float32)
        if self._raw:
            probs = softmax(logits)
        return logits, np.asarray(probs, dtype=np.float32)


class TorchPredictor(Predictor):
    """A checkpoint's model in torch eager mode (EMA weights when the checkpoint has them and `use_ema`)."""

    backend = "torch"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 use_ema: bool = True, *, loaded: Any = None, info: ModelInfo | None = None,
                 calibration: bool = True, tta: str | None = None) -> None:
        """`loaded`: an already loaded model (fgcli.engine.checkpoint.load_model) instead of reading `path`;
        `info`: another description of it (e.g. export's, at the export input size). `calibration` False: the
        uncalibrated probabilities; `tta` 'flip': average the image and its mirror (fgcli.engine.fused)."""
        import torch

        from fgcli.engine.calibration import stored_temperature
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

    @property
    def device(self) -> str:
        return f"torch {self.torch_device}"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.torch_device)
            logits, probs = self.fused(x)
        return logits.float().cpu().numpy(), probs.float().cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64, returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def combine_view_arrays(views: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of `fgcli.engine.fused.combine_views` for (logits, probs) of each view already computed:
    logits = log of the mean uncalibrated softmax, probs = the mean of the views' probs."""
    if len(views) == 1:
        return views[0]
    raw = np.mean(np.stack([softmax(v[0]).astype(np.float64) for v in views]), axis=0)
    logits = np.log(np.clip(raw, np.finfo(np.float64).tiny, None)).astype(np.float32)
    probs = np.mean(np.stack([np.asarray(v[1], dtype=np.float64) for v in views]), axis=0).astype(np.float32)
    return logits, probs


def calibration_note(temperature: float | None, calibrated: bool, tta: str | None = None) -> str:
    """Which probabilities a user sees, in one line."""
    flip = ", averaged with the mirrored image (--tta flip)" if tta else ""
    if calibrated:
        return f"probabilities calibrated (temperature {temperature:.3f}){flip}"
    if temperature:
        return f"probabilities uncalibrated (--no-calibration; the fitted temperature is {temperature:.3f}){flip}"
    return ("note: this model has no fitted temperature (trained before calibration, or without a validation "
            f"split): probabilities are uncalibrated{flip}. Fit one with `fgcli calibrate CHECKPOINT`.")


def is_onnx(path: str | Path) -> bool:
    """True for an `.onnx` model file (by suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def load_predictor(path: str | Path, *, device: str = "auto", providers: Sequence[str] | None = None,
                   threads: int | None = None, use_ema: bool = True, calibration: bool = True,
                   tta: str | None = None) -> Predictor:
    """A Predictor for a `.onnx` file (onnxruntime) or any other file as an fgcli checkpoint (torch);
    `calibration` / `tta` as in TorchPredictor."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file {path} does not exist. Give a checkpoint (.pt) or an exported .onnx file.")
    if is_onnx(path):
        return OnnxPredictor(path, providers=providers, device=device, threads=threads, calibration=calibration,
                             tta=tta)
    if providers:
        raise UserError("--providers applies to .onnx models only; for a checkpoint use --device.")
    return TorchPredictor(path, device=device, threads=threads, use_ema=use_ema, calibration=calibration, tta=tta)
