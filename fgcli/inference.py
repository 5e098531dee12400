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

    @property
    def device(self) -> str:
        """Where it runs, in words (e.g. 'onnxruntime CPUExecutionProvider', 'torch cpu')."""
        raise NotImplementedError

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probs) as float32 arrays N x C for a float32 batch N x 3 x H x W."""
        raise NotImplementedError

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
                 threads: int | None = None) -> None:
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

    @property
    def provider(self) -> str:
        """The execution provider actually in use."""
        return str(self.session.get_providers()[0])

    @property
    def device(self) -> str:
        return f"onnxruntime {self.provider}"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(["logits", "probs"], {"images": images})
        return np.asarray(logits, dtype=np.float32), np.asarray(probs, dtype=np.float32)


class TorchPredictor(Predictor):
    """A checkpoint's model in torch eager mode (EMA weights when the checkpoint has them and `use_ema`)."""

    backend = "torch"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 use_ema: bool = True, *, loaded: Any = None, info: ModelInfo | None = None) -> None:
        """`loaded`: an already loaded model (fgcli.engine.checkpoint.load_model) instead of reading `path`;
        `info`: another description of it (e.g. export's, at the export input size)."""
        import torch

        from fgcli.engine.checkpoint import load_model

        if threads:
            torch.set_num_threads(int(threads))
        self.path = Path(path)
        self.loaded = loaded if loaded is not None else load_model(self.path, device=device, use_ema=use_ema)
        self.ckpt = self.loaded.checkpoint
        self.model = self.loaded.model
        self.torch_device = self.loaded.device
        self.info = info if info is not None else self.loaded.info

    @property
    def device(self) -> str:
        return f"torch {self.torch_device}"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.torch_device)
            logits = self.model.predict(x).float()
            probs = torch.softmax(logits, dim=1)
        return logits.cpu().numpy(), probs.cpu().numpy()


def is_onnx(path: str | Path) -> bool:
    """True for an `.onnx` model file (by suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def load_predictor(path: str | Path, *, device: str = "auto", providers: Sequence[str] | None = None,
                   threads: int | None = None, use_ema: bool = True) -> Predictor:
    """A Predictor for a `.onnx` file (onnxruntime) or any other file as an fgcli checkpoint (torch)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file {path} does not exist. Give a checkpoint (.pt) or an exported .onnx file.")
    if is_onnx(path):
        return OnnxPredictor(path, providers=providers, device=device, threads=threads)
    if providers:
        raise UserError("--providers applies to .onnx models only; for a checkpoint use --device.")
    return TorchPredictor(path, device=device, threads=threads, use_ema=use_ema)
