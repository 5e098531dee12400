"""MGE-CNN: a mixture of granularity-specific experts (Zhang et al., ICCV 2019), per spec/mge.md.

Expert 1 sees the image; expert e+1 sees the zoom of expert e's class activation map (closed-form
Grad-CAM, thresholded box, batched `roi_align`). Each expert has a global head (GAP -> FC), a part head
(1x1 conv on stage 3 -> ReLU -> global max pool -> FC) and a concatenation head on the l2-normalised,
detached features of both. A gate with its own backbone weights the experts' concatenation logits into
the fused output `z_gate`. Heads, in the official order: g1, p1, c1, g2, p2, c2, g3, p3, c3, gate.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgcli.config import Config
from fgcli.errors import UserError
from fgcli.methods import register_method
from fgcli.methods.base import Method
from fgcli.methods.mge import config as mge_config
from fgcli.methods.mge import crops
from fgcli.methods.mge.config import MgeConfig
from fgcli.methods.precision import full_precision
from fgcli.methods.targets import cross_entropy

CONCAT_SCALE = 10.0  # u_e = [10 * f / |f| ; 10 * h / |h|] (official)
L2_EPS = 1e-12


class ExpertHeads(nn.Module):
    """One expert's three heads on (stage 3, stage 4) features; the gradient routing of spec §2.2."""

    def __init__(self, c3: int, c4: int, num_classes: int, part_mult: int, part_padding: int) -> None:
        super().__init__()
        width = part_mult * num_classes
        self.global_fc = nn.Linear(c4, num_classes)
        self.part_conv = nn.Conv2d(c3, width, kernel_size=1, padding=part_padding)
        self.part_fc = nn.Linear(width, num_classes)
        self.concat_fc = nn.Linear(c4 + width, num_classes)

    def forward(self, stage3: Tensor, stage4: Tensor) -> dict[str, Tensor]:
        pooled = stage4.mean(dim=(2, 3))  # f_e
        part = torch.relu(self.part_conv(stage3.detach())).amax(dim=(2, 3))  # h_e
        concat = torch.cat([CONCAT_SCALE * F.normalize(pooled.detach(), dim=1, eps=L2_EPS),
                            CONCAT_SCALE * F.normalize(part.detach(), dim=1, eps=L2_EPS)], dim=1)
        return {"pooled": pooled, "g": self.global_fc(pooled), "p": self.part_fc(part),
                "c": self.concat_fc(concat)}


class GateHead(nn.Module):
    """GAP features -> Linear -> [ReLU] -> Linear -> softmax over the experts."""

    def __init__(self, c4: int, hidden: int, experts: int, activation: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(c4, hidden)]
        if activation:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(hidden, experts))
        self.mlp = nn.Sequential(*layers)

    def forward(self, pooled: Tensor) -> Tensor:
        logits = self.mlp(pooled)
        with full_precision(logits.device.type):  # CPU autocast would keep a bf16 softmax
            return torch.softmax(logits.float(), dim=1)


@dataclass
class _Pass:
    """Everything one forward computes; `forward` and `attention` read from the same pass."""

    heads: dict[str, Tensor] = field(default_factory=dict)
    gate: Tensor | None = None
    inputs: list[Tensor] = field(default_factory=list)  # X_1 .. X_E
    features: list[Tensor] = field(default_factory=list)  # F_1 .. F_E (stage 4)
    pooled: list[Tensor] = field(default_factory=list)  # f_1 .. f_E
    classes: list[Tensor] = field(default_factory=list)  # the CAM class k_e of experts 1 .. E-1
    boxes: list[Tensor] = field(default_factory=list)  # box_e in expert e's input grid, e = 1 .. E-1


@register_method("mge")
class MGE(Method, config=mge_config):
    """MGE-CNN on any timm backbone that yields at least two feature maps (spec/mge.md)."""

    aux_keys = ("gate_weights", "boxes")
    default_backbone_lr_scale = 0.1  # paper: backbones 1e-3, heads 1e-2
    auto_bf16 = True  # mge_lite0_128 on flowers102, seeds 0-1: mean val top-1 83.53 % (bf16) vs 83.58 % (fp32)

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        from fgcli.backbones import build_backbone

        self.opts: MgeConfig = cfg.mge
        self.num_experts = int(self.opts.experts)
        trunk = build_backbone(cfg.model, img_size=cfg.data.img_size, num_stages=2)
        if len(trunk.channels) < 2:
            raise UserError(f"method 'mge' needs a backbone with at least two feature stages, but "
                            f"'{trunk.name}' gives {len(trunk.channels)}. Use e.g. resnet50 or convnext_tiny.")
        c3, c4 = trunk.channels[-2], trunk.channels[-1]
        copies = 1 if self.opts.share_backbone else self.num_experts + 1
        # Each copy starts from the same (pretrained) weights: build once, deep-copy.
        self.trunks = nn.ModuleList([trunk] + [copy.deepcopy(trunk) for _ in range(copies - 1)])
        self.experts = nn.ModuleList([
            ExpertHeads(c3, c4, num_classes, self.opts.part_mult, self.opts.part_padding)
            for _ in range(self.num_experts)])
        self.gate_head = GateHead(c4, self.opts.gate_hidden, self.num_experts, self.opts.gate_act)
        if self.num_experts == 1:
            self.aux_keys = ("gate_weights",)

    # ---- names -------------------------------------------------------------------------------------
    def head_names(self) -> list[str]:
        """The logits heads in the official order: g1, p1, c1, ..., gE, pE, cE, gate."""
        names = [f"{kind}{e}" for e in range(1, self.num_experts + 1) for kind in ("g", "p", "c")]
        return names + ["gate"]

    @property
    def input_size(self) -> int | None:
        return self.trunks[0].fixed_size

    # ---- the pipeline ----------------------------------------------------------------------------
    def _trunk(self, index: int) -> nn.Module:
        return self.trunks[0] if self.opts.share_backbone else self.trunks[index]

    def _cam_class(self, e: int, out: dict[str, Tensor], targets: Tensor | None) -> Tensor:
        """k_e: the given class (ground truth in training), else the argmax of the CAM classifier."""
        if targets is not None:
            return targets
        if self.opts.cam_source == "first" and e > 0:
            # official quirk: expert 1's FC applied to this expert's pooled features
            return self.experts[0].global_fc(out["pooled"]).argmax(dim=1)
        return out["g"].argmax(dim=1)

    def _cam(self, e: int, features: Tensor, classes: Tensor) -> Tensor:
        """The closed-form Grad-CAM of expert e on its feature grid (B x h x w)."""
        head = self.experts[0 if self.opts.cam_source == "first" else e].global_fc
        weights = crops.cam_weights(head.weight, classes, features.shape[-2] * features.shape[-1])
        return crops.class_activation_map(features, weights)

    def _run(self, images: Tensor, classes: Tensor | None) -> _Pass:
        result = _Pass()
        x = images
        for e in range(self.num_experts):
            stage3, stage4 = self._trunk(e)(x)[-2:]
            out = self.experts[e](stage3, stage4)
            for kind in ("g", "p", "c"):
                result.heads[f"{kind}{e + 1}"] = out[kind]
            result.inputs.append(x)
            result.features.append(stage4)
            result.pooled.append(out["pooled"])
            if e + 1 < self.num_experts:
                k = self._cam_class(e, out, classes)
                box, x = self._zoom(e, stage4, k, x)
                x = x.to(images.dtype)
                result.classes.append(k)
                result.boxes.append(box)
        if self.opts.share_backbone:
            gate_pooled = result.pooled[0]  # same trunk, same input: reuse expert 1's features
        else:
            gate_pooled = self._trunk(self.num_experts)(images)[-1].mean(dim=(2, 3))
        gate = self.gate_head(gate_pooled)
        concat = torch.stack([result.heads[f"c{e + 1}"].detach() for e in range(self.num_experts)], dim=2)
        with full_precision(images.device.type):  # the fused output: fp32 also under autocast
            result.heads["gate"] = (concat.float() * gate[:, None, :]).sum(dim=2)
        result.gate = gate
        return result

    def _zoom(self, e: int, features: Tensor, classes: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expert e's CAM of `classes` on its stage-4 `features` -> box -> zoomed crop of its input `x`:
        (box B x 4, crop B x 3 x H x W), all in fp32 with autocast off (a bf16 / fp16 CAM or box would move
        the crop; spec §2.3)."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        with full_precision(x.device.type):
            cam = crops.upsample_cam(self._cam(e, features, classes), size)
            box = crops.cam_box(cam, self.opts.box_threshold, self.opts.box_end == "exclusive")
            return box, crops.crop_and_zoom(x, box, size)

    def forward(self, images: Tensor, targets: Tensor | None = None) -> dict[str, Tensor]:
        """The 10 head logits (B x C) plus `gate_weights` (B x E) and `boxes` (B x (E-1) x 4)."""
        run = self._run(images, targets)
        outputs = {name: run.heads[name] for name in self.head_names()}
        outputs["gate_weights"] = run.gate
        if run.boxes:
            outputs["boxes"] = torch.stack(run.boxes, dim=1)
        return outputs

    def fuse(self, outputs: dict[str, Tensor]) -> Tensor:
        """The fused logits: the gate-weighted sum of the experts' concatenation logits."""
        return outputs["gate"]

    # ---- losses ----------------------------------------------------------------------------------
    def loss(self, outputs: dict[str, Tensor], targets: Tensor,
             epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Spec §3: CE on every head, CE on the gate, diversity between consecutive concat heads.

        A term whose weight is 0 is off: not computed and not reported. With `schedule: staged`, the terms
        of an expert that is not active yet are reported as 0 (so a run's logged columns never change).
        Heads without a live term enter the total as `0 * logits.sum()`, so every parameter stays in the
        graph and DDP needs no `find_unused_parameters`.
        """
        o = self.opts
        eps = self.cfg.train.label_smoothing  # on every head's cross-entropy (not on the diversity terms)
        divergence = diversity_official if o.diversity == "official" else diversity_paper
        # (name, weight, heads the term reads, expert whose activity gates it, how to compute it)
        specs: list[tuple[str, float, str, int, Any]] = []
        for e in range(1, self.num_experts + 1):
            for kind, weight in (("g", o.lambda_global), ("p", o.lambda_part), ("c", o.lambda_concat)):
                specs.append((f"ce_{kind}{e}", weight, f"{kind}{e}", e,
                              lambda h=f"{kind}{e}": cross_entropy(outputs[h], targets, eps)))
            if e > 1 and o.diversity != "off":
                specs.append((f"div{e}", o.lambda_div, f"c{e}", e,
                              lambda e=e: divergence(outputs[f"c{e}"], outputs[f"c{e - 1}"], targets)))
        specs.append(("ce_gate", o.lambda_gate, "gate", self.num_experts,
                      lambda: cross_entropy(outputs["gate"], targets, eps)))

        total = outputs["gate"].new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        live: set[str] = set()
        for name, weight, head, expert, compute in specs:
            if weight <= 0:
                continue
            if self._expert_active(expert, epoch):
                terms[name] = compute()
                total = total + weight * terms[name]
                live.add(head)
            else:
                terms[name] = total.new_zeros(())
        for head in self.head_names():
            if head not in live:
                total = total + 0.0 * outputs[head].sum()
        return total, terms

    def soft_target_refusal(self) -> str | None:
        return ("MGE-CNN zooms on the CAM of each image's label and its diversity terms leave that label out; a "
                "mixed image has two labels, so mixup / CutMix are not defined for it")

    def _expert_active(self, expert: int, epoch: int) -> bool:
        """Staged schedule: expert e (1-based) trains from epoch (e-1) * stage_epochs; joint: always."""
        if self.opts.schedule != "staged":
            return True
        return epoch >= (expert - 1) * self.opts.stage_epochs

    # ---- attention maps (spec §5) ----------------------------------------------------------------
    def attention(self, images: Tensor) -> dict[str, Tensor]:
        """The maps of `cams(images)`, with each expert's CAM of its own prediction (as at inference)."""
        return self.cams(images)

    @torch.no_grad()
    def cams(self, images: Tensor, classes: Tensor | None = None) -> dict[str, Tensor]:
        """Per-expert CAMs, boxes, zoomed crops and gate weights, from the model's own forward pass.

        `classes` fixes the CAM class (e.g. the ground truth); default: each expert's prediction, as at
        inference. Returns, for experts e = 1..E (B = batch, H x W = input size):
          - `cam{e}`: the min-max normalised CAM in expert e's own input grid (B x H x W, in [0, 1]);
          - `cam{e}_image`: the same map warped into the input image (NaN outside expert e's region);
          - `box{e}` / `box{e}_image` (e < E): (x1, y1, x2, y2) in expert e's grid / in the image;
          - `region{e}`: expert e's input extent in image coordinates (the full image for e = 1);
          - `crop{e}` (e > 1): X_e as fed to expert e (normalised like the input);
          - `class{e}`: the class each CAM used; `top1_{e}`: argmax of z^c_e;
          - `gate`: the gate weights (B x E); `logits`: the fused logits.
        CAM E is computed for display only (the model does not use it).
        """
        size = (int(images.shape[-2]), int(images.shape[-1]))
        run = self._run(images, classes)
        batch = images.shape[0]
        full = images.new_tensor([0.0, 0.0, size[1] - 1.0, size[0] - 1.0]).float().expand(batch, 4)
        region = full
        maps: dict[str, Tensor] = {"gate": run.gate, "logits": run.heads["gate"]}
        for e in range(self.num_experts):
            n = e + 1
            if e < len(run.boxes):
                k = run.classes[e]
            else:  # the last expert's CAM, for display: same rule as the others
                k = classes if classes is not None else self._cam_class(
                    e, {"pooled": run.pooled[e], "g": run.heads[f"g{n}"]}, None)
            cam = crops.upsample_cam(self._cam(e, run.features[e], k), size)
            normed, _ = crops.normalize_cam(cam)
            maps[f"cam{n}"] = normed
            maps[f"cam{n}_image"] = crops.warp_to_image(normed, region, size)
            maps[f"region{n}"] = region
            maps[f"class{n}"] = k
            maps[f"top1_{n}"] = run.heads[f"c{n}"].argmax(dim=1)
            if e > 0:
                maps[f"crop{n}"] = run.inputs[e]
            if e < len(run.boxes):
                box = run.boxes[e]
                maps[f"box{n}"] = box
                maps[f"box{n}_image"] = crops.compose_box(region, box, size)
                region = maps[f"box{n}_image"]
        return maps


def diversity_official(current: Tensor, previous: Tensor, targets: Tensor) -> Tensor:
    """Official "KL constraint": mean over (b, c) of exp(-q̄ (log q̄ - ℓ̄)), y entries zeroed, no renorm.

    q = softmax(previous).detach(), ℓ = log_softmax(current); 0 log 0 = 0 (kl_div, reduction "none").
    """
    keep = 1.0 - F.one_hot(targets, current.shape[1]).float()
    q = torch.softmax(previous.detach().float(), dim=1) * keep
    log_p = torch.log_softmax(current.float(), dim=1) * keep
    return torch.exp(-F.kl_div(log_p, q, reduction="none")).mean()


def diversity_paper(current: Tensor, previous: Tensor, targets: Tensor) -> Tensor:
    """Paper form (unverified): mean_b exp(-KL(q̃_b || p̃_b)), class y removed and the rest renormalised."""
    is_target = F.one_hot(targets, current.shape[1]).bool()
    neg_inf = torch.finfo(torch.float32).min
    q = torch.softmax(previous.detach().float().masked_fill(is_target, neg_inf), dim=1)
    log_p = torch.log_softmax(current.float().masked_fill(is_target, neg_inf), dim=1)
    q = q.masked_fill(is_target, 0.0)
    log_p = log_p.masked_fill(is_target, 0.0)
    return torch.exp(-F.kl_div(log_p, q, reduction="none").sum(dim=1)).mean()
