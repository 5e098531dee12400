"""The baseline: a timm backbone's last feature map -> global average pooling -> dropout -> one Linear.

Only the last stage is used, so single-scale backbones (ViT) work too. The attention map is the class
activation map (CAM) of the predicted class, computed analytically from the classifier weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fgcli.backbones import build_backbone
from fgcli.config import Config
from fgcli.methods import register_method
from fgcli.methods.base import Method
from fgcli.methods.baseline import config as baseline_config
from fgcli.methods.targets import cross_entropy


@register_method("baseline")
class Baseline(Method, config=baseline_config):
    """Backbone + GAP + dropout + Linear; one head named `cls`, which is also the fused output."""

    auto_bf16 = True  # baseline_lite0_128 on flowers102, seeds 0-1: mean val top-1 84.71 % (bf16) vs 85.15 % (fp32)

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg.model, img_size=cfg.data.img_size, num_stages=1)
        channels = self.backbone.channels[-1]
        self.dropout = nn.Dropout(cfg.baseline.dropout)
        self.classifier = nn.Linear(channels, num_classes)

    @property
    def input_size(self) -> int | None:
        return self.backbone.fixed_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's B x C' x h x w map."""
        return self.backbone(images)[-1]

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pooled = self.features(images).mean(dim=(2, 3))
        return {"cls": self.classifier(self.dropout(pooled))}

    def probe_head(self) -> nn.Linear:
        return self.classifier  # dropout only acts in training

    def fuse(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["cls"].float()  # fp32 also when the head ran under autocast

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(outputs["cls"], targets, self.cfg.train.label_smoothing)
        return ce, {"ce": ce}

    def soft_target_refusal(self) -> str | None:
        return None  # one cross-entropy term

    @torch.no_grad()
    def attention(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """`cam`: B x h x w map ReLU(W[k] . F) of the predicted class k (no bias); `pred`: B class indices."""
        fmap = self.features(images)
        logits = self.classifier(fmap.mean(dim=(2, 3)))
        pred = logits.argmax(1)
        weights = self.classifier.weight[pred]  # B x C'
        cam = F.relu(torch.einsum("bc,bchw->bhw", weights, fmap))
        return {"cam": cam, "pred": pred}
