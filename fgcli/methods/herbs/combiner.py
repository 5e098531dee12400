"""HERBS graph-convolution combiner (spec/herbs.md §2.7; official `GCNCombiner`)."""

from __future__ import annotations

import torch
from torch import nn


class GCNCombiner(nn.Module):
    """Classifies the concatenated selected tokens (B x ΣK x D, rank order) with one adaptive graph conv.

    Node pooling Linear(ΣK -> J) over rank positions, adjacency A0 + α·tanh(q_i - k_j), G = BN(conv(H) @ A),
    readout Linear(J -> 1), dropout, Linear(D -> C). J = max(1, ΣK // 64).
    """

    def __init__(self, total_selects: int, dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        joints = max(1, total_selects // 64)
        self.joints = joints
        self.param_pool0 = nn.Linear(total_selects, joints)
        self.adj1 = nn.Parameter(torch.eye(joints) / 100 + 1 / 100)
        self.conv1 = nn.Conv1d(dim, dim, 1)
        self.batch_norm1 = nn.BatchNorm1d(dim)
        self.conv_q1 = nn.Conv1d(dim, max(1, dim // 4), 1)
        self.conv_k1 = nn.Conv1d(dim, max(1, dim // 4), 1)
        self.alpha1 = nn.Parameter(torch.zeros(1))
        self.param_pool1 = nn.Linear(joints, 1)
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` B x ΣK x D -> logits B x C."""
        h = self.param_pool0(tokens.transpose(1, 2))  # B x D x J
        q = self.conv_q1(h).mean(1)  # B x J
        k = self.conv_k1(h).mean(1)
        adjacency = self.adj1 + self.alpha1 * torch.tanh(q.unsqueeze(2) - k.unsqueeze(1))  # B x J x J
        h = self.batch_norm1(torch.matmul(self.conv1(h), adjacency))
        h = self.dropout(self.param_pool1(h).flatten(1))  # B x D
        return self.classifier(h)
