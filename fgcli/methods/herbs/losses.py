"""HERBS loss terms and the high-temperature schedule (spec/herbs.md §3), each a small pure function.

All terms are computed in fp32 (safe under AMP). Stage sums and weights are applied by the method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgcli.methods.targets import cross_entropy


def temperature(epoch: int, t0: float = 64.0, step: int = 10) -> float:
    """T_e = T0 · 0.5^⌊e / step⌋ for the 0-based epoch e (64, 32, ..., 0.5 over 80 epochs)."""
    return float(t0) * 0.5 ** (int(epoch) // int(step))


def refinement_loss(td_tokens: torch.Tensor, bu_tokens: torch.Tensor, temp: float,
                    reduction: str = "official") -> torch.Tensor:
    """HTR: KL(q || p) with q = softmax(Y^bu.detach() / T) (target), p = softmax(Y^td / T); no T² factor.

    `reduction="official"`: Σ_{b,s,c} q (log q - log p) / (B·S·C), the official `nn.KLDivLoss()` "mean"
    (= the per-token KL divided by C). `"token"`: the true per-token KL, Σ / (B·S).
    """
    log_p = F.log_softmax(td_tokens.float() / temp, dim=-1)
    q = F.softmax(bu_tokens.detach().float() / temp, dim=-1)
    total = F.kl_div(log_p, q, reduction="sum")  # Σ q (log q - log p), with 0·log 0 = 0
    b, s, c = td_tokens.shape
    if reduction == "official":
        return total / (b * s * c)
    if reduction == "token":
        return total / (b * s)
    raise ValueError(f"unknown KL reduction {reduction!r}; use 'official' or 'token'")


def drop_loss(dropped: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Background suppression: (tanh(Y^drop) - (-1))², mean over tokens and classes (`"mean"`, official) or
    summed over classes and averaged over tokens (`"sum"`). An empty dropped set gives 0 (never NaN)."""
    if dropped.numel() == 0:
        return dropped.new_zeros((), dtype=torch.float32)
    sq = (torch.tanh(dropped.float()) + 1.0).pow(2)
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum(-1).mean()
    raise ValueError(f"unknown drop reduction {reduction!r}; use 'mean' or 'sum'")


def selected_loss(selected: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """CE of every selected token's logits (B x K x C) against its image's label (B indices, or B x C soft
    targets), mean over B·K tokens."""
    b, k, c = selected.shape
    return cross_entropy(selected.reshape(b * k, c), targets.repeat_interleave(k, dim=0), smoothing)


def image_ce(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of image-level logits B x C (layer heads mean_s Y^bu_i, and the combiner)."""
    return cross_entropy(logits, targets, smoothing)
