"""The cross-entropy every method's label terms use: hard labels (with `train.label_smoothing`) or the soft
targets of mixup / CutMix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (fp32) of B x C `logits` against class indices (B) or class probabilities (B x C).

    `smoothing` (torch's `label_smoothing`) applies to class indices; soft targets come already smoothed (timm's
    Mixup builds them with the run's `train.label_smoothing`), so they are used as they are.
    """
    soft = targets.is_floating_point()
    return F.cross_entropy(logits.float(), targets.float() if soft else targets,
                           label_smoothing=0.0 if soft else float(smoothing))
