"""Backbone taps as token maps (spec/herbs.md §2.1): 4 tensors B x S_i x C_i plus their (H_i, W_i).

Swin's official taps are the outputs of the patch-merging layers of stages 2-4 and the output of the last
stage (timm 0.4.12 merged at the end of a stage; modern timm merges at the start). They are reproduced by
walking the `features_only` body explicitly, so nothing is hooked or stored on a module.
"""

from __future__ import annotations

import torch
from torch import nn

from fgcli.backbones import Backbone
from fgcli.errors import UserError


def _stages(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body's children, in order (timm FeatureListNet is a ModuleDict run in sequence)."""
    return list(body.named_children())


def has_swin_stages(backbone: Backbone) -> bool:
    """True when the body is a sequence whose last 4 stages have `downsample` and `blocks` (timm Swin V1/V2)."""
    stages = [m for _, m in _stages(backbone.body) if hasattr(m, "downsample") and hasattr(m, "blocks")]
    return "swin" in backbone.name.lower() and len(stages) >= 4 and backbone.nhwc


class TokenTaps(nn.Module):
    """`forward(images) -> (tokens, sizes)`: 4 token maps B x S_i x C_i (fine to coarse) and their (H_i, W_i).

    `swin_taps="official"` gives Swin's post-merge taps (§2.1, e.g. 48²/24²/12²/12² at 384); "stages" (and
    every non-Swin backbone) gives the plain stage outputs.
    """

    def __init__(self, backbone: Backbone, swin_taps: str = "official") -> None:
        super().__init__()
        self.backbone = backbone
        is_swin = "swin" in backbone.name.lower()
        self.official_swin = swin_taps == "official" and is_swin
        if self.official_swin and not has_swin_stages(backbone):
            raise UserError(f"backbone '{backbone.name}' has no timm Swin stages (downsample + blocks) for the "
                            "official HERBS taps. Use --set herbs.swin_taps=stages.")

    def _swin_official(self, x: torch.Tensor) -> list[torch.Tensor]:
        children = _stages(self.backbone.body)
        stage_ids = [i for i, (_, m) in enumerate(children) if hasattr(m, "downsample") and hasattr(m, "blocks")]
        last4 = stage_ids[-4:]
        taps: list[torch.Tensor] = []
        for i, (_, module) in enumerate(children):
            if i in last4[1:]:
                x = module.downsample(x)
                taps.append(x)
                x = module.blocks(x)
            else:
                x = module(x)
            if i == last4[-1]:
                taps.append(x)
                break
        return taps  # NHWC

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        self.backbone.check_input(images)
        if self.official_swin:
            maps = self._swin_official(images)
            sizes = [(int(m.shape[1]), int(m.shape[2])) for m in maps]
            tokens = [m.flatten(1, 2) for m in maps]
        else:
            maps = self.backbone(images)  # NCHW
            sizes = [(int(m.shape[2]), int(m.shape[3])) for m in maps]
            tokens = [m.flatten(2).transpose(1, 2) for m in maps]
        return tokens, sizes


def probe_shapes(taps: TokenTaps, img_size: int) -> tuple[list[int], list[tuple[int, int]]]:
    """(channels C_i, sizes (H_i, W_i)) of the 4 taps at `img_size`, without computing anything real.

    Runs under FakeTensorMode in eval mode (so BatchNorm statistics are left alone); falls back to a real
    batch-1 forward if a backbone does not support fake tensors.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    modes = {m: m.training for m in taps.modules()}
    taps.eval()
    try:
        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                tokens, sizes = taps(torch.zeros(1, 3, img_size, img_size))
                channels = [int(t.shape[2]) for t in tokens]
        except Exception:  # noqa: BLE001 - any fake-tensor limitation: do it for real
            with torch.no_grad():
                tokens, sizes = taps(torch.zeros(1, 3, img_size, img_size))
                channels = [int(t.shape[2]) for t in tokens]
    finally:
        for module, mode in modes.items():
            module.training = mode
    return channels, sizes
