"""fp32 islands under mixed precision: the parts of a method whose results low precision could change.

Under `torch.autocast` (bf16 on CPU or CUDA, fp16 on CUDA) matmuls and convolutions run in low precision.
Where a discrete decision or a range-sensitive reduction follows (HERBS' token ranking, MGE-CNN's CAM ->
box -> crop step, the per-token classifiers feeding the ranking, the gate), methods run the code inside
`full_precision(device_type)` on fp32 inputs: autocast is switched off there, so every op in it is fp32.
The same parts stay fp32 in an `--fp16` ONNX export (`fgcli.formats.onnx.graph`).
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


# -- depthwise convolutions in fp32 under CPU bf16 autocast ------------------------------------------------
# oneDNN's bf16 kernels for the backward pass of depthwise convolutions are 3-70x slower than its fp32 ones
# (benchmarks/train_speed.py, `--part depthwise`), while dense and pointwise convolutions gain from AMX / AVX-512
# BF16. Keeping depthwise layers in fp32 is what makes bf16 autocast pay on depthwise-heavy backbones
# (EfficientNet, MobileNet, ConvNeXt's 7x7 depthwise). The classes are swapped in place: same parameters,
# same state-dict keys, and the swap is undone by `keep_depthwise_fp32(model, False)`.
_FP32_CLASSES: dict[type, type] = {}


def is_depthwise(module: nn.Module) -> bool:
    """A 2-d convolution with one group per input channel (and more than one channel)."""
    return isinstance(module, nn.Conv2d) and module.in_channels > 1 and module.groups == module.in_channels


def _fp32_class(cls: type) -> type:
    if cls not in _FP32_CLASSES:
        def forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
            with full_precision(x.device.type):
                return cls.forward(self, x.float())

        _FP32_CLASSES[cls] = type(f"FullPrecision{cls.__name__}", (cls,), {"forward": forward, "_fp32_of": cls})
    return _FP32_CLASSES[cls]


def keep_depthwise_fp32(model: nn.Module, on: bool = True) -> int:
    """Make every depthwise convolution of `model` compute in fp32 under autocast (`on`), or undo it; returns
    how many layers are affected."""
    count = 0
    for module in model.modules():
        original = getattr(type(module), "_fp32_of", None)
        if on and original is None and is_depthwise(module):
            module.__class__ = _fp32_class(type(module))
            count += 1
        elif not on and original is not None:
            module.__class__ = original
            count += 1
    return count
