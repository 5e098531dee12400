"""HERBS background-suppression selector (spec/herbs.md §2.6): batched, stateless, exportable.

For every sample the stage's predicted class ĉ = argmax_c mean_s Y[b, s, c] is found, tokens are ranked by
their confidence for ĉ (ties broken by the lower token index, identically in torch and ONNX Runtime), the
first K tokens are kept ("selected") and the rest are "dropped". No per-sample loop, nothing stored on a
module: the threshold τ is an output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fgcli.methods.precision import full_precision


@dataclass
class Selection:
    """What the selector returns for one stage (B = batch, S = tokens, K = kept, C = classes, D = width)."""

    features: torch.Tensor  # B x K x D: bottom-up features of the selected tokens, in rank order
    selected: torch.Tensor  # B x K x C: their logits
    dropped: torch.Tensor  # B x (S-K) x C: logits of the dropped tokens, in rank order
    order: torch.Tensor  # B x S (int64): π, token indices by descending score (ties: lower index first)
    score: torch.Tensor  # B x S (fp32): σ = softmax(Y)[ĉ], the probability of the predicted class
    threshold: torch.Tensor  # B (fp32): τ = σ of the first dropped token (0 when nothing is dropped)
    pred: torch.Tensor  # B (int64): ĉ, the class the tokens were ranked for


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """ĉ = argmax_c of the token-averaged logits (B x S x C -> B), computed in fp32."""
    return logits.float().mean(1).argmax(-1)


def rank_scores(logits: torch.Tensor, cls: torch.Tensor, key: str = "margin") -> tuple[torch.Tensor, torch.Tensor]:
    """(ranking key, σ) for class `cls` of every token, both B x S in fp32.

    `key="margin"` ranks on m = Y[ĉ] - logsumexp_{c≠ĉ} Y[c], and σ = sigmoid(m): the same order as σ, but m
    does not saturate to exactly 1.0 and create false ties. `key="prob"` ranks on σ = softmax(Y)[ĉ] computed
    exactly as the official code does (a softmax over classes, then the ĉ column).
    """
    y = logits.float()
    index = cls.view(-1, 1, 1).expand(-1, y.shape[1], 1)
    if key == "prob":
        prob = torch.softmax(y, dim=2).gather(2, index).squeeze(2)
        return prob, prob
    if key != "margin":
        raise ValueError(f"unknown ranking key {key!r}; use 'margin' or 'prob'")
    y_cls = y.gather(2, index).squeeze(2)
    is_cls = torch.arange(y.shape[2], device=y.device).view(1, 1, -1) == cls.view(-1, 1, 1)
    margin = y_cls - torch.logsumexp(y.masked_fill(is_cls, float("-inf")), dim=2)
    return margin, torch.sigmoid(margin)


def descending_order(key: torch.Tensor) -> torch.Tensor:
    """π: indices that sort each row of `key` (B x S) in descending order, ties broken by the lower index.

    Eager mode uses a stable descending sort (lower index first among equals). While exporting to ONNX it
    uses `torch.topk(k=S)`, which both exporters emit as ONNX TopK; ONNX Runtime's TopK resolves ties the
    same way (tests/test_herbs_export.py proves the two branches give identical orders).
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(key, key.shape[1], dim=1, largest=True, sorted=True).indices
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j], :] for B x S x F `x` and B x J `index`.

    Whole rows are copied with one `index_select` over the flattened B*S rows (ONNX Gather): on the CPU this is
    several times faster than `gather` with an index expanded to B x J x F, which reads one index per element.
    """
    batch, tokens, width = x.shape
    offsets = torch.arange(batch, device=index.device, dtype=index.dtype).unsqueeze(1) * tokens
    rows = (index + offsets).reshape(-1)
    return x.reshape(batch * tokens, width).index_select(0, rows).view(batch, index.shape[1], width)


def select_tokens(
    features: torch.Tensor,
    logits: torch.Tensor,
    num_select: int,
    key: str = "margin",
    cls: torch.Tensor | None = None,
) -> Selection:
    """Keep the `num_select` most confident tokens of every sample (spec §2.6), fully batched.

    `features` B x S x D (bottom-up features N_i), `logits` B x S x C (Y^bu_i). `cls` overrides the predicted
    class (the ground-truth option of `herbs.select_class`); by default it is the stage's own prediction.
    The class, scores and order are computed in fp32 with autocast off (`full_precision`), under AMP too.
    """
    num_tokens = logits.shape[1]
    if not 1 <= num_select <= num_tokens:
        raise ValueError(f"num_select={num_select} must be in [1, {num_tokens}] (the stage's token count)")
    with full_precision(logits.device.type):
        pred = predicted_class(logits) if cls is None else cls
        rank_key, prob = rank_scores(logits, pred, key)
        order = descending_order(rank_key)
    keep, drop = order[:, :num_select], order[:, num_select:]
    if num_select < num_tokens:
        threshold = prob.gather(1, order[:, num_select:num_select + 1]).squeeze(1)
    else:
        threshold = prob.new_zeros(prob.shape[0])
    return Selection(
        features=_take(features, keep),
        selected=_take(logits, keep),
        dropped=_take(logits, drop),
        order=order,
        score=prob,
        threshold=threshold,
        pred=pred,
    )
