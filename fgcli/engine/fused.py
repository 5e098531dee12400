"""The fused prediction every consumer uses: raw fused logits plus calibrated (and optionally flip-averaged)
probabilities. The exported ONNX graph, the torch predictor (predict / bench) and eval all compute it here.

Every method's `fuse()` returns logits whose softmax is the fused probability: plain logits for the baseline,
MGE-CNN's gate and HERBS `fusion: logit_sum`, and the log of the mean of the heads' softmaxes for HERBS
`fusion: prob_mean` (log p is a valid logit vector: softmax(log p) = p). So one formula calibrates both kinds:
softmax(fused / T), which for a probability fusion is "temperature-scale the log of the fused probability"
(p^(1/T) renormalised). Dividing by T > 0 never changes the argmax.

Flip test-time augmentation (the one implementation: `tta_views` and `combine_views`, for torch tensors and numpy
arrays alike, used by the exported graph, every predictor and eval) runs the image and its horizontal mirror and averages the two views'
probabilities after calibration. The `logits` output is never calibrated: one view gives the fused logits
unchanged; several give log(mean of the views' uncalibrated softmaxes), so softmax(logits) is always the
uncalibrated probability (what `--no-calibration` shows) and `probs` the calibrated one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fgcli.errors import UserError

TTA_MODES = ("none", "flip")


def check_tta(tta: str | None) -> str | None:
    """None for no test-time augmentation, else the mode name ('flip'); a one-line error for anything else."""
    if tta is None or str(tta).strip().lower() in ("", "none", "off"):
        return None
    mode = str(tta).strip().lower()
    if mode not in TTA_MODES:
        raise UserError(f"--tta {tta}: unknown test-time augmentation; use one of {', '.join(TTA_MODES)}.")
    return mode


def tta_views(images: Any, tta: str | None) -> list[Any]:
    """The views of a N x 3 x H x W batch (a torch tensor or a numpy array): itself, plus its horizontal mirror
    for 'flip'."""
    if tta != "flip":
        return [images]
    if isinstance(images, np.ndarray):
        return [images, np.ascontiguousarray(images[..., ::-1])]
    return [images, torch.flip(images, dims=[3])]


def combine_views(fused: list[Any], temperature: float = 1.0) -> tuple[Any, Any]:
    """(logits, probs) from the fused logits of each view (see the module docstring); numpy arrays in, numpy
    float32 arrays out."""
    if isinstance(fused[0], np.ndarray):
        logits, probs = combine_views([torch.from_numpy(np.asarray(f, dtype=np.float32)) for f in fused],
                                      temperature)
        return logits.numpy(), probs.numpy()
    z = [f.float() for f in fused]
    t = float(temperature)
    scaled = z if t == 1.0 else [v / t for v in z]
    if len(z) == 1:
        return z[0], torch.softmax(scaled[0], dim=1)
    logits = torch.logsumexp(torch.stack([F.log_softmax(v, dim=1) for v in z]), dim=0) - math.log(len(z))
    probs = torch.stack([torch.softmax(v, dim=1) for v in scaled]).mean(0)
    return logits, probs


class FusedPrediction(nn.Module):
    """What the exported graph computes: `model.predict` over the TTA views -> (raw logits, calibrated probs).

    `temperature` 1.0 means uncalibrated (the graph then holds no division); it is a constant, not a parameter.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, tta: str | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.temperature = float(temperature)
        self.tta = check_tta(tta)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return combine_views([self.model.predict(v) for v in tta_views(images, self.tta)], self.temperature)
