"""The loss of a training step: the method's own, or a task's that builds on it (distillation adds a frozen
teacher's term). The trainer and the speed probe call it inside the run's autocast, on the batch the method saw;
the engine knows nothing else about what a task adds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fgcli.methods.base import Method
    from fgcli.modelinfo import Preprocess


class StepLoss:
    """`method.loss(outputs, targets, epoch)`; subclasses add terms computed from the step's images."""

    #: what the loss adds, for the speed probe's cache ('' = the method's own loss, measured alone)
    cache_key: str = ""

    def bind(self, *, device: torch.device, classes: list[str], preprocess: Preprocess) -> None:
        """The run's device, classes and the preprocessing of its batches, known before the speed probe."""

    def set_memory_format(self, channels_last: bool) -> None:
        """The memory format the step's images come in (the speed probe tries each, the run keeps one)."""

    def __call__(self, method: Method, images: torch.Tensor, outputs: dict[str, torch.Tensor],
                 targets: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return method.loss(outputs, targets, epoch)

    def checkpoint_entries(self) -> dict[str, Any]:
        """Extra keys (plain values) for every checkpoint the run writes."""
        return {}
