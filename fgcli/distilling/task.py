"""The training loss of a distillation run: the student method's own loss plus the teacher's term, computed on the
batch the student saw (the engine's `StepLoss` hook; the engine itself knows nothing about teachers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fgcli.data.select import class_difference
from fgcli.distilling.loss import distill_total, kd_term
from fgcli.distilling.teacher import Teacher, adapt_batch
from fgcli.engine.steploss import StepLoss
from fgcli.errors import UserError

if TYPE_CHECKING:
    from fgcli.methods.base import Method
    from fgcli.modelinfo import Preprocess


class DistillLoss(StepLoss):
    """(1 - alpha) * method.loss + alpha * T^2 * KL(teacher || student) on the student's fused logits; the loss
    terms logged are the method's own plus `kd` (T^2 * KL, before the weighting)."""

    def __init__(self, teacher: Teacher, alpha: float, temperature: float) -> None:
        self.teacher = teacher
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.cache_key = f"distill:{teacher.kind}:{teacher.sha256[:16]}"
        self.student_preprocess: Preprocess | None = None

    def bind(self, *, device: torch.device, classes: list[str], preprocess: Preprocess) -> None:
        difference = class_difference(self.teacher.classes, list(classes))
        if difference is not None:
            raise UserError(f"teacher {self.teacher.path} has other classes than the data ({difference}). Distil a "
                            "teacher trained on this data set (the same classes, in the same order).")
        self.teacher.to(device)
        self.student_preprocess = preprocess

    def set_memory_format(self, channels_last: bool) -> None:
        self.teacher.set_channels_last(channels_last)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's calibrated logits on the student's batch (no gradient)."""
        assert self.student_preprocess is not None, "bind() first"
        with torch.no_grad():
            return self.teacher.calibrated_logits(adapt_batch(images, self.student_preprocess,
                                                              self.teacher.preprocess))

    def __call__(self, method: Method, images: torch.Tensor, outputs: dict[str, torch.Tensor],
                 targets: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hard, terms = method.loss(outputs, targets, epoch)
        kd = kd_term(method.fuse(outputs), self.teacher_logits(images), self.temperature)
        return distill_total(hard, kd, self.alpha), {**terms, "kd": kd}

    def record(self) -> dict[str, Any]:
        """The checkpoint's `distill` entry: the teacher (path, format, sha256, method, backbone, its val top-1,
        input size, calibration temperature) and the weighting."""
        return {**self.teacher.record(), "alpha": self.alpha, "temperature": self.temperature}

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"distill": self.record()}
