"""Knowledge distillation (Hinton et al., 2015): the student matches the teacher's temperature-softened
probabilities as well as the labels.

    total = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

with s the student's fused logits and t the teacher's calibrated logits (its fused logits divided by its fitted
temperature, so that the targets are its calibrated probabilities at T = 1). T^2 keeps the gradient of the soft
term on the scale of the hard one as T changes. The KL is summed over classes and averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the mean over the batch (in float32).

    A teacher logit of -inf (a probability fusion's log 0) is a class of probability 0, which adds nothing."""
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=1)
    p = F.softmax(teacher_logits.float() / t, dim=1)
    kl = (torch.special.xlogy(p, p) - p * log_q).sum(dim=1).mean()
    return kl * (t * t)


def distill_total(hard: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * the student's own loss + alpha * the distillation term."""
    return (1.0 - float(alpha)) * hard + float(alpha) * kd
