"""fp32 islands under mixed precision: the parts of a method whose results low precision could change.

Under `torch.autocast` (bf16 on CPU or CUDA, fp16 on CUDA) matmuls and convolutions run in low precision.
Where a discrete decision or a range-sensitive reduction follows (HERBS' token ranking, MGE-CNN's CAM ->
box -> crop step, the per-token classifiers feeding the ranking, the gate), methods run the code inside
`full_precision(device_type)` on fp32 inputs: autocast is switched off there, so every op in it is fp32.
The same parts stay fp32 in an `--fp16` ONNX export (`fgcli.exporting.graph`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def full_precision(device_type: str) -> Any:
    """A context in which autocast is off for `device_type` (a no-op context when autocast is not on, e.g.
    while exporting, so the traced graph is unchanged)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class FullPrecisionLinear(nn.Linear):
    """`nn.Linear` that always computes in fp32, also under autocast (same parameters and state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x.device.type):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())
