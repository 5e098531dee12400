"""The small interface every method implements; the engine knows nothing else about methods."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fgcli.config import Config


class Method(nn.Module):
    """A fine-grained classifier with named heads.

    Subclasses build their modules in `__init__(cfg, num_classes)` and implement:
      - `forward(images, targets=None) -> dict[str, Tensor]`: named head logits, each B x C (plus any
        extra tensors the loss needs, under keys listed in `aux_keys`). The engine passes `targets` in
        training only (MGE-CNN's attention uses the ground-truth class there); at inference it is None;
      - `fuse(outputs) -> Tensor`: the B x C logits of the final prediction (what eval reports first
        and what export ships);
      - `loss(outputs, targets, epoch) -> (total, {name: term})`;
      - `attention(images) -> dict[str, Tensor]`: maps for visualisation (no autograd needed);
      - `param_groups(cfg)`: optimizer parameter groups (default: one group, no weight decay on
        norms and biases handled by timm's optimizer factory).
    """

    name: str = "method"
    #: keys of `forward`'s output that are not B x C head logits (excluded from per-head metrics)
    aux_keys: tuple[str, ...] = ()

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes

    def heads(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The B x C head logits of a forward output (for per-head metrics)."""
        return {k: v for k, v in outputs.items() if k not in self.aux_keys}

    def fuse(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover - interface
        raise NotImplementedError

    def attention(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def param_groups(self, cfg: Config) -> list[dict[str, Any]]:
        """One group with every trainable parameter; methods override for per-part learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Fused logits for a batch (what the exported graph computes)."""
        return self.fuse(self(images))

    @property
    def input_size(self) -> int | None:
        """A fixed input size required by the model (token-mixing layers, Swin), or None if any size works."""
        return None
