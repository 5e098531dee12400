"""The frozen teacher of `fgcli distill`: a checkpoint on torch (eval mode, no gradient, under the run's autocast
and memory format) or a file `fgcli export` wrote (.onnx, OpenVINO IR ...) on its format's runtime (fgcli.formats). Either gives the calibrated fused logits (fused / T,
T the teacher's fitted temperature) of the student's batch, which is first brought to the teacher's own
preprocessing: de-normalised with the student's mean / std, resized to the teacher's input size, normalised with
the teacher's mean / std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fgcli.console import log
from fgcli.errors import UserError
from fgcli.formats import format_of
from fgcli.modelinfo import Preprocess, sha256_file

#: Preprocess.interpolation -> F.interpolate mode (anything else resizes bilinearly)
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def same_preprocessing(a: Preprocess, b: Preprocess) -> bool:
    """Whether a batch prepared for `a` is already what `b` expects (input size, mean, std)."""
    return (a.img_size == b.img_size and tuple(map(float, a.mean)) == tuple(map(float, b.mean))
            and tuple(map(float, a.std)) == tuple(map(float, b.std)))


def adapt_batch(images: torch.Tensor, student: Preprocess, teacher: Preprocess) -> torch.Tensor:
    """The student's N x 3 x s x s batch as the teacher's preprocessing makes it: (x * std_s + mean_s) resized to
    t x t (the teacher's interpolation, antialiased when shrinking), then (x - mean_t) / std_t. Unchanged when both
    preprocess alike."""
    if same_preprocessing(student, teacher):
        return images

    def column(values: Any) -> torch.Tensor:
        return torch.tensor([float(v) for v in values], dtype=torch.float32, device=images.device).view(1, 3, 1, 1)

    x = images.float() * column(student.std) + column(student.mean)
    size = int(teacher.img_size)
    if x.shape[-2:] != (size, size):
        mode = _MODES.get(teacher.interpolation, "bilinear")
        smooth = mode != "nearest"
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False if smooth else None,
                          antialias=smooth and size < x.shape[-1])
    return (x - column(teacher.mean)) / column(teacher.std)


class Teacher:
    """A frozen teacher: its description and `calibrated_logits(batch)` for batches in its own preprocessing."""

    kind = ""  # "checkpoint", or the exported file's format name (fgcli.formats: onnx, onnx-fp16, openvino ...)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = sha256_file(path)
        self.classes: list[str] = []
        self.preprocess: Preprocess
        self.method = self.backbone = ""
        self.temperature: float | None = None  # the teacher's fitted calibration temperature
        self.val_top1: float | None = None
        self.weights = ""  # ema | model (a checkpoint), or the file's precision (an exported file)

    def to(self, device: torch.device) -> None:
        """Run on `device` from now on."""

    def set_channels_last(self, channels_last: bool) -> None:
        """The memory format of the teacher's weights (a torch teacher; onnxruntime takes plain arrays)."""

    def fused_logits(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def calibrated_logits(self, images: torch.Tensor) -> torch.Tensor:
        """fused / T (T = 1 without a fitted temperature), float32, on the images' device."""
        logits = self.fused_logits(images).float()
        return logits / self.temperature if self.temperature else logits

    def record(self) -> dict[str, Any]:
        """What a distilled checkpoint, its args and its ONNX metadata say about the teacher (plain values)."""
        return {"teacher": str(self.path), "format": self.kind, "sha256": self.sha256, "method": self.method,
                "backbone": self.backbone, "val_top1": self.val_top1, "img_size": int(self.preprocess.img_size),
                "calibration_temperature": self.temperature, "weights": self.weights, "classes": len(self.classes)}

    def line(self) -> str:
        """The teacher in words, for the log."""
        top1 = f"val top-1 {self.val_top1:.2f} %" if self.val_top1 is not None else "val top-1 unknown"
        calibrated = f"calibrated T {self.temperature:.3f}" if self.temperature else "uncalibrated"
        return (f"{self.method} on {self.backbone} at {self.preprocess.img_size} px ({self.path.name}, {self.kind}, "
                f"{top1}, {calibrated})")


class TorchTeacher(Teacher):
    """A checkpoint's model (EMA weights when it has them, as `fgcli export` and `predict` use)."""

    kind = "checkpoint"

    def __init__(self, path: Path) -> None:
        from fgcli.engine.calibration import stored_temperature
        from fgcli.engine.checkpoint import checkpoint_val_top1, load_model

        super().__init__(path)
        loaded = load_model(path, device="cpu")
        self.model = loaded.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.classes, self.preprocess = list(loaded.classes), loaded.preprocess
        self.method, self.backbone = loaded.info.method, loaded.info.backbone
        self.temperature = stored_temperature(loaded.checkpoint)
        self.val_top1 = checkpoint_val_top1(loaded.checkpoint)
        self.weights = loaded.weights

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def set_channels_last(self, channels_last: bool) -> None:
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def fused_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.predict(images)


class ExportedTeacher(Teacher):
    """A file written by `fgcli export` (any registered format but the checkpoint, no test-time augmentation in
    it) on its format's runtime: its raw `logits` output and the temperature its metadata records."""

    def __init__(self, path: Path, fmt: Any) -> None:
        from fgcli.formats import resolve

        super().__init__(path)
        self.format = fmt
        self.kind = fmt.name
        info = fmt.read_info(resolve(path)[1]) if fmt.read_info is not None else self._loaded("cpu").info
        if info.extra.get("tta", "none") not in ("", "none"):
            raise UserError(f"teacher {path} was exported with --tta {info.extra['tta']}: its logits average the "
                            "mirrored view too, unlike the checkpoint's. Export the teacher without --tta.")
        self.classes, self.preprocess = list(info.classes), info.preprocess
        self.method, self.backbone = info.method, info.backbone
        self.temperature = float(info.extra["temperature"]) if info.extra.get("temperature") else None
        self.val_top1 = float(info.extra["val_top1"]) if info.extra.get("val_top1") else None
        self.weights = info.precision
        self.predictor: Any = None

    def _loaded(self, where: str, threads: int | None = None) -> Any:
        from fgcli.formats import load_predictor
        from fgcli.options import LoadOptions

        return load_predictor(self.path, LoadOptions(device=where, threads=threads))

    def to(self, device: torch.device) -> None:
        on_cpu = device.type == "cpu" or self.format.cpu_only  # a CPU-only runtime feeds a GPU student from the CPU
        self.predictor = self._loaded("cpu" if on_cpu else str(device), torch.get_num_threads() if on_cpu else None)

    def fused_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.predictor is None:
            self.to(torch.device("cpu"))
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        logits, _ = self.predictor(array)
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)


def load_teacher(path: str | Path) -> Teacher:
    """A checkpoint (.pt, or a run folder: its weights/best.pt) or an exported .onnx, on the CPU until `to()`;
    a one-line error for a missing file, and a warning when the teacher has no fitted temperature."""
    path = Path(path)
    if path.is_dir() and (path / "weights" / "best.pt").is_file():
        path = path / "weights" / "best.pt"
    if not path.is_file():
        raise UserError(f"teacher {path} does not exist. Give the teacher's checkpoint (e.g. runs/train/exp/weights/"
                        "best.pt) or its exported .onnx (`fgcli export CHECKPOINT --onnx`).")
    path = path.resolve()
    fmt = format_of(path)
    teacher = TorchTeacher(path) if fmt.heads else ExportedTeacher(path, fmt)
    if not teacher.temperature:
        log.warning(f"teacher {path} has no fitted temperature: its uncalibrated probabilities are distilled. Fit one "
                    f"with `fgcli calibrate {path}`" + (" and export it again" if teacher.kind != "checkpoint" else "") + ".")
    return teacher
