"""The HERBS method (spec/herbs.md): backbone taps -> top-down FPN -> bottom-up path -> selector -> combiner.

Nine image-level heads: td1..td4 (top-down, mean over all tokens), bu1..bu4 (bottom-up), comb (combiner).
`forward` is stateless and batched; the selector's thresholds and classes are outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fgcli.backbones import build_backbone
from fgcli.config import Config
from fgcli.console import log
from fgcli.errors import UserError
from fgcli.methods import register_method
from fgcli.methods.base import Method
from fgcli.methods.herbs import config as herbs_config
from fgcli.methods.herbs import losses
from fgcli.methods.herbs.combiner import GCNCombiner
from fgcli.methods.herbs.neck import BottomUp, TokenClassifier, TopDown
from fgcli.methods.herbs.selector import Selection, select_tokens
from fgcli.methods.herbs.taps import TokenTaps, probe_shapes
from fgcli.methods.precision import full_precision

STAGES = 4
HEADS = tuple(f"td{i}" for i in range(1, STAGES + 1)) + tuple(f"bu{i}" for i in range(1, STAGES + 1)) + ("comb",)
AUX_PREFIXES = ("tok_td", "tok_bu", "sel", "drop", "tau", "cls")


def resolve_num_selects(values: list[float], tokens: list[int], img_size: int | None = None) -> list[int]:
    """K_i per stage: values < 1 are fractions of S_i (rounded, at least 1), others integer counts.

    A count above S_i is an error naming the stage, its tokens and the fix (the paper's counts are for
    384-448 px inputs; at a smaller size they can exceed a stage's tokens).
    """
    out = []
    for i, (value, s) in enumerate(zip(values, tokens, strict=True), start=1):
        if value < 1:
            k = max(1, round(value * s))
        else:
            if value != int(value):
                raise UserError(f"herbs.num_selects[{i - 1}] = {value} is neither a fraction (< 1) nor a whole "
                                "count. Use e.g. --set herbs.num_selects=[256,128,64,32] or [0.1,0.2,0.4,0.2].")
            k = int(value)
        if k > s:
            at = f" at img_size {img_size}" if img_size else ""
            raise UserError(f"herbs.num_selects[{i - 1}] = {k} but stage {i} has only {s} tokens{at}. Keep at most "
                            f"{s} there, give fractions of each stage's tokens (e.g. --set herbs.num_selects="
                            "[0.125,0.125,0.125,0.125]) or raise --img-size.")
        out.append(k)
    return out


@dataclass
class _Parts:
    """Everything one forward pass computes (internal; shared by forward and attention)."""

    td: list[torch.Tensor]  # Y^td_i, B x S_i x C
    bu: list[torch.Tensor]  # Y^bu_i
    selections: list[Selection]
    comb: torch.Tensor  # B x C
    sizes: list[tuple[int, int]]


@register_method("herbs")
class Herbs(Method, config=herbs_config):
    """HERBS: high-temperature refinement and background suppression (arXiv 2303.06442)."""

    aux_keys = tuple(f"{p}{i}" for p in AUX_PREFIXES for i in range(1, STAGES + 1))
    auto_bf16 = True  # herbs_lite0_128 on flowers102, seeds 0-1: mean val top-1 85.78 % (bf16) vs 84.66 % (fp32)

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        h = cfg.herbs
        backbone = build_backbone(cfg.model, img_size=cfg.data.img_size)
        backbone.require_pyramid("herbs")
        self.mixing = h.mixing if h.mixing != "auto" else ("conv" if backbone.fixed_size is not None else "interp")
        self.taps = TokenTaps(backbone, h.swin_taps)
        self.build_size = int(cfg.data.img_size or backbone.fixed_size
                              or backbone.default_preprocess()["img_size"])
        channels, sizes = probe_shapes(self.taps, self.build_size)
        tokens = [hh * ww for hh, ww in sizes]
        self.build_tokens = tokens
        self.num_selects = resolve_num_selects(list(h.num_selects), tokens, self.build_size)
        self._fixed_size = self.build_size if (self.mixing == "conv" or backbone.fixed_size is not None) else None
        self.top_down = TopDown(channels, tokens, h.fpn_size, self.mixing)
        self.td_heads = torch.nn.ModuleList(TokenClassifier(h.fpn_size, num_classes) for _ in range(STAGES))
        self.bottom_up = BottomUp(tokens, h.fpn_size, self.mixing)
        self.bu_heads = torch.nn.ModuleList(TokenClassifier(h.fpn_size, num_classes) for _ in range(STAGES))
        self.combiner = GCNCombiner(sum(self.num_selects), h.fpn_size, num_classes, h.combiner_dropout)
        log.info(f"herbs: taps {list(zip(tokens, channels, strict=True))} (tokens, channels), mixing "
                 f"{self.mixing}, K {self.num_selects}, J {self.combiner.joints}, D {h.fpn_size}")

    # ---------------------------------------------------------------- model
    @property
    def input_size(self) -> int | None:
        """The build size when token-mixing layers or a windowed backbone fix it, else None."""
        return self._fixed_size

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """True when a switched-off loss term leaves parameters without gradient (DDP must be told)."""
        h = self.cfg.herbs
        return h.lambda_r == 0 or h.lambda_m == 0 or (h.lambda_l == 0 and h.lambda_d == 0 and h.lambda_s == 0)

    def _check_size(self, images: torch.Tensor) -> None:
        size = tuple(images.shape[-2:])
        if self._fixed_size is not None and size != (self._fixed_size, self._fixed_size):
            raise UserError(f"this HERBS model was built for {self._fixed_size}x{self._fixed_size} inputs (token "
                            f"mixing layers), got {size[0]}x{size[1]}. Use --img-size {self._fixed_size}.")

    def _run(self, images: torch.Tensor, cls_override: list[torch.Tensor] | None = None) -> _Parts:
        self._check_size(images)
        feats, sizes = self.taps(images)
        p = self.top_down(feats, sizes)
        td = [head(x) for head, x in zip(self.td_heads, p, strict=True)]
        n = self.bottom_up(p, sizes)
        bu = [head(x) for head, x in zip(self.bu_heads, n, strict=True)]
        key = self.cfg.herbs.rank_key
        selections = []
        for i in range(STAGES):
            k = self.num_selects[i]
            if k > bu[i].shape[1]:
                raise UserError(f"herbs stage {i + 1} has {bu[i].shape[1]} tokens at input "
                                f"{tuple(images.shape[-2:])}, fewer than num_selects {k}. Use a larger "
                                f"--img-size (the model was built at {self.build_size}).")
            cls = None if cls_override is None else cls_override[i]
            selections.append(select_tokens(n[i], bu[i], k, key=key, cls=cls))
        comb = self.combiner(torch.cat([s.features for s in selections], dim=1))
        return _Parts(td=td, bu=bu, selections=selections, comb=comb, sizes=sizes)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The 9 head logits (B x C) plus the aux tensors the loss needs (listed in `aux_keys`)."""
        override = None
        if self.cfg.herbs.select_class == "label" and self.training and targets is not None:
            override = [targets] * STAGES
        parts = self._run(images, override)
        out: dict[str, torch.Tensor] = {}
        for i in range(STAGES):
            out[f"td{i + 1}"] = parts.td[i].mean(1)
        for i in range(STAGES):
            out[f"bu{i + 1}"] = parts.bu[i].mean(1)
        out["comb"] = parts.comb
        for i, sel in enumerate(parts.selections, start=1):
            out[f"tok_td{i}"] = parts.td[i - 1]
            out[f"tok_bu{i}"] = parts.bu[i - 1]
            out[f"sel{i}"] = sel.selected
            out[f"drop{i}"] = sel.dropped
            out[f"tau{i}"] = sel.threshold
            out[f"cls{i}"] = sel.pred
        return out

    def fuse(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """log of the mean of the 9 heads' softmaxes (default), or the summed logits (`herbs.fusion=logit_sum`)."""
        logits = torch.stack([outputs[name].float() for name in HEADS], dim=0)
        with full_precision(logits.device.type):  # fp32 also when called under autocast
            if self.cfg.herbs.fusion == "logit_sum":
                return logits.sum(0)
            return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(len(HEADS))

    # ---------------------------------------------------------------- loss
    def temperature(self, epoch: int) -> float:
        """The refinement temperature of a 0-based epoch."""
        return losses.temperature(epoch, self.cfg.herbs.temperature, self.cfg.herbs.temp_step)

    def loss(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
             epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = λ_r Σ L_r + λ_l Σ L_l + λ_d Σ L_d + λ_s Σ L_s + λ_m L_m (spec §3); a zero weight skips its term.

        The returned terms are unweighted (summed over stages; `layer` is averaged when
        `herbs.layer_agg=mean`), so ablations stay comparable.
        """
        h = self.cfg.herbs
        eps = self.cfg.train.label_smoothing  # on the label terms: layer, select, comb
        stages = range(1, STAGES + 1)
        terms: dict[str, torch.Tensor] = {}
        if h.lambda_r:
            temp = self.temperature(epoch)
            terms["refine"] = sum(losses.refinement_loss(outputs[f"tok_td{i}"], outputs[f"tok_bu{i}"], temp,
                                                         h.kl_reduction) for i in stages)
        if h.lambda_l:
            layer = sum(losses.image_ce(outputs[f"bu{i}"], targets, eps) for i in stages)
            terms["layer"] = layer / STAGES if h.layer_agg == "mean" else layer
        if h.lambda_d:
            terms["drop"] = sum(losses.drop_loss(outputs[f"drop{i}"], h.drop_reduction) for i in stages)
        if h.lambda_s:
            terms["select"] = sum(losses.selected_loss(outputs[f"sel{i}"], targets, eps) for i in stages)
        if h.lambda_m:
            terms["comb"] = losses.image_ce(outputs["comb"], targets, eps)
        weights = {"refine": h.lambda_r, "layer": h.lambda_l, "drop": h.lambda_d, "select": h.lambda_s,
                   "comb": h.lambda_m}
        if not terms:
            raise UserError("every HERBS loss weight is 0; set at least one of herbs.lambda_r/l/d/s/m > 0.")
        total = sum(weights[name] * value for name, value in terms.items())
        return total, terms

    def soft_target_refusal(self) -> str | None:
        """Soft targets enter the label terms (layer, select, comb) as they are; refinement and background
        suppression do not read labels. Only `select_class: label` (tokens ranked by the image's label) needs
        one class per image."""
        if self.cfg.herbs.select_class == "label":
            return ("herbs.select_class=label ranks each image's tokens by its label, and a mixed image has two; "
                    "use herbs.select_class=pred")
        return None

    # ---------------------------------------------------------------- viz
    @torch.no_grad()
    def attention(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Background-suppression maps per stage (spec §5), from the same forward pass as the model.

        Keys (B = batch, H x W = input size): `score{i}` σ of the stage's class ĉ_i, bilinearly upsampled
        (B x H x W, probabilities; normalise per image for display); `select{i}` the kept-token mask, nearest
        upsampled (1 = foreground); `tau{i}` (B), `cls{i}` (B) and `disagree{i}` (B bool, ĉ_i ≠ fused class);
        `select_mean` the mean of the 4 masks; `score_prod` the product of the max-normalised score maps;
        `pred` the fused class and `fused` the fused logits.
        """
        parts = self._run(images)
        outputs = {f"td{i + 1}": t.mean(1) for i, t in enumerate(parts.td)}
        outputs.update({f"bu{i + 1}": t.mean(1) for i, t in enumerate(parts.bu)})
        outputs["comb"] = parts.comb
        fused = self.fuse(outputs)
        pred = fused.argmax(-1)
        size = tuple(images.shape[-2:])
        out: dict[str, torch.Tensor] = {"pred": pred, "fused": fused}
        masks, product = [], None
        for i, (sel, (hh, ww)) in enumerate(zip(parts.selections, parts.sizes, strict=True), start=1):
            b = sel.score.shape[0]
            score = F.interpolate(sel.score.view(b, 1, hh, ww), size=size, mode="bilinear", align_corners=False)
            keep = torch.zeros_like(sel.score).scatter(1, sel.order[:, :sel.features.shape[1]], 1.0)
            mask = F.interpolate(keep.view(b, 1, hh, ww), size=size, mode="nearest")
            out[f"score{i}"] = score[:, 0]
            out[f"select{i}"] = mask[:, 0]
            out[f"tau{i}"] = sel.threshold
            out[f"cls{i}"] = sel.pred
            out[f"disagree{i}"] = sel.pred != pred
            masks.append(mask[:, 0])
            peak = score[:, 0].flatten(1).amax(1).clamp_min(1e-12).view(b, 1, 1)
            product = score[:, 0] / peak if product is None else product * (score[:, 0] / peak)
        out["select_mean"] = torch.stack(masks).mean(0)
        out["score_prod"] = product
        return out
