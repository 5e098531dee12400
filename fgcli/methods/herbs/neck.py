"""HERBS neck (spec/herbs.md §2.2-2.5): top-down FPN, bottom-up path and the per-token classifiers.

Everything works on token maps B x S x D. Between stages the maps are resized either by token mixing (a
Conv1d with tokens as channels, official for transformers; fixes the input size) or by parameter-free
bilinear ×2 up / 2×2 average-pool down (default for CNNs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.methods.precision import FullPrecisionLinear


def token_mlp(c_in: int, c_hidden: int, c_out: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear over the last axis (the same as two 1x1 convs)."""
    return nn.Sequential(nn.Linear(c_in, c_hidden), nn.ReLU(), nn.Linear(c_hidden, c_out))


class TokenClassifier(nn.Module):
    """Per-token classifier: Conv1d(D,D,1) -> BatchNorm1d(D) -> ReLU -> Conv1d(D,C,1), as Linear layers.

    A kernel-1 Conv1d over B x D x S is a Linear over the tokens of B x S x D (same default initialisation),
    and BatchNorm1d over B x D x S normalises each channel over B·S positions, which BatchNorm1d does on the
    flattened (B·S) x D tokens. `forward`: B x S x D -> B x S x C. The last layer computes in fp32 also under
    autocast (`FullPrecisionLinear`): its logits are ranked by the selector, and bf16 / fp16 logits would tie.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.fc2 = FullPrecisionLinear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.bn(self.fc1(x).reshape(b * s, d)).reshape(b, s, d)
        return self.fc2(F.relu(h))


class TokenMix(nn.Module):
    """`Conv1d(in=S_in, out=S_out, kernel=1)` on B x S_in x D: A·X + b with tokens as channels (official)."""

    def __init__(self, tokens_in: int, tokens_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(tokens_in, tokens_out, 1)

    def forward(self, x: torch.Tensor, size_in: tuple[int, int], size_out: tuple[int, int]) -> torch.Tensor:
        return self.conv(x)


class Resample(nn.Module):
    """Parameter-free resize of a token map: bilinear up (×2, align_corners=False) or 2×2 average-pool down.

    Identity when the sizes already match. Sizes that are not exactly ×2 apart (odd feature maps) fall back
    to bilinear / adaptive average pooling to the target size.
    """

    def __init__(self, direction: str) -> None:
        super().__init__()
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        self.direction = direction

    def forward(self, x: torch.Tensor, size_in: tuple[int, int], size_out: tuple[int, int]) -> torch.Tensor:
        if tuple(size_in) == tuple(size_out):
            return x
        b, _, d = x.shape
        grid = x.transpose(1, 2).reshape(b, d, size_in[0], size_in[1])
        if self.direction == "up":
            grid = F.interpolate(grid, size=size_out, mode="bilinear", align_corners=False)
        elif size_in[0] == 2 * size_out[0] and size_in[1] == 2 * size_out[1]:
            grid = F.avg_pool2d(grid, kernel_size=2, stride=2)
        else:
            grid = F.adaptive_avg_pool2d(grid, size_out)
        return grid.flatten(2).transpose(1, 2)


def make_mixer(mode: str, tokens_in: int, tokens_out: int, direction: str) -> nn.Module:
    """A TokenMix ("conv") or Resample ("interp") between two stages."""
    return TokenMix(tokens_in, tokens_out) if mode == "conv" else Resample(direction)


class TopDown(nn.Module):
    """P_4 = Proj_4(L_4); P_i = Proj_i(L_i) + U_{i+1}(P_{i+1}) for i = 3, 2, 1 (§2.2)."""

    def __init__(self, channels: list[int], tokens: list[int], dim: int, mode: str) -> None:
        super().__init__()
        self.proj = nn.ModuleList(token_mlp(c, c, dim) for c in channels)
        # up[i] is U_{i+2} in the spec's 1-based naming: it maps stage i+1 onto stage i (0-based)
        self.up = nn.ModuleList(make_mixer(mode, tokens[i + 1], tokens[i], "up") for i in range(len(channels) - 1))

    def forward(self, feats: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        n = len(feats)
        out: list[torch.Tensor] = [feats[0]] * n
        out[n - 1] = self.proj[n - 1](feats[n - 1])
        for i in range(n - 2, -1, -1):
            out[i] = self.proj[i](feats[i]) + self.up[i](out[i + 1], sizes[i + 1], sizes[i])
        return out


class BottomUp(nn.Module):
    """Q_i = MLP_i(P_i); N_1 = Q_1; N_{i+1} = Q_{i+1} + V_i(N_i) (§2.4)."""

    def __init__(self, tokens: list[int], dim: int, mode: str) -> None:
        super().__init__()
        self.mlp = nn.ModuleList(token_mlp(dim, dim, dim) for _ in tokens)
        self.down = nn.ModuleList(make_mixer(mode, tokens[i], tokens[i + 1], "down") for i in range(len(tokens) - 1))

    def forward(self, feats: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        out = [self.mlp[0](feats[0])]
        for i in range(1, len(feats)):
            out.append(self.mlp[i](feats[i]) + self.down[i - 1](out[i - 1], sizes[i - 1], sizes[i]))
        return out
