"""timm backbones as 4 stages of NCHW feature maps, with known channels and strides.

CNNs come from `features_only=True`; Swin-like models return NHWC from `features_only` and have an input
size fixed at build (`img_size`), both handled here. Single-scale models (ViT) have no 4-stage pyramid:
methods that need one get a clear error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fgcli.errors import UserError, unknown_choice


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise unknown_choice("backbone", name, timm.list_models())


def needs_fixed_size(name: str) -> bool:
    """True for backbones whose input size is fixed at build (Swin and other windowed transformers)."""
    lowered = name.lower()
    return any(key in lowered for key in ("swin", "vit", "deit", "beit", "eva", "maxvit", "coatnet", "mambaout"))


class Backbone(nn.Module):
    """The last 4 stages of a timm model as NCHW maps: `forward(x) -> [f1, f2, f3, f4]` (fine to coarse).

    Attributes: `channels` and `reductions` (4 each), `fixed_size` (int or None), `pretrained_cfg`.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        pretrained_strict: bool = True,
        img_size: int | None = None,
        drop_path: float | None = None,
        num_stages: int = 4,
        output_stride: int | None = None,
    ) -> None:
        super().__init__()

        _check_name(name)
        self.name = name
        kwargs: dict[str, Any] = {"features_only": True}
        if drop_path is not None:
            kwargs["drop_path_rate"] = drop_path
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        self.fixed_size = None
        if needs_fixed_size(name) and img_size is not None:
            kwargs["img_size"] = img_size
            self.fixed_size = img_size
        self.body, timm_load = _create_body(name, pretrained and not pretrained_file, kwargs)
        if self.fixed_size is None and needs_fixed_size(name):
            size = getattr(self.body, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1]
            self.fixed_size = int(size)
        self._take_stages(num_stages, output_stride)
        self.pretrained_cfg: dict[str, Any] = dict(getattr(self.body, "pretrained_cfg", {}) or {})
        self.load_report: dict[str, Any] | None = None
        if pretrained_file:
            from fgcli.pretrained import load_pretrained_file

            self.load_report = load_pretrained_file(self, pretrained_file, strict=pretrained_strict)
        elif pretrained:
            from fgcli.pretrained import timm_load_report

            self.load_report = timm_load_report(self, timm_load)

    def _take_stages(self, num_stages: int, output_stride: int | None) -> None:
        """The last `num_stages` feature maps: their indices, channels and strides, and whether they form a
        multi-scale pyramid."""
        info = self.body.feature_info
        all_channels = list(info.channels())
        all_reductions = list(info.reduction())
        # a dilated backbone (output_stride) repeats its last stride on purpose: still a pyramid of stages
        distinct_needed = num_stages if output_stride is None else 2
        self.single_scale = (len(all_channels) < num_stages
                             or len(set(all_reductions[-num_stages:])) < distinct_needed)
        take = min(num_stages, len(all_channels))
        self.indices = list(range(len(all_channels) - take, len(all_channels)))
        self.channels = all_channels[-take:]
        self.reductions = all_reductions[-take:]
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.nhwc = str(getattr(fmt, "value", fmt)).upper() == "NHWC"

    def require_pyramid(self, method: str) -> None:
        """Raise a clear error when the backbone has no 4-stage multi-scale pyramid."""
        if self.single_scale:
            raise UserError(f"method '{method}' needs a 4-stage multi-scale backbone, but '{self.name}' is "
                            f"single-scale (strides {self.reductions}). Use e.g. resnet50, convnext_tiny, "
                            "efficientnet_b0 or a swin_* backbone.")

    def check_input(self, x: torch.Tensor) -> None:
        """Fixed-size backbones accept only their build size."""
        if self.fixed_size is not None and tuple(x.shape[-2:]) != (self.fixed_size, self.fixed_size):
            raise UserError(f"backbone '{self.name}' was built for {self.fixed_size}x{self.fixed_size} inputs, "
                            f"got {tuple(x.shape[-2:])}. Use --img-size {self.fixed_size} or rebuild.")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        feats = [feats[i] for i in self.indices]
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats

    def default_preprocess(self, img_size: int | None = None) -> dict[str, Any]:
        """mean / std / input size / crop_pct / interpolation from timm's pretrained config."""
        cfg = self.pretrained_cfg
        size = img_size or self.fixed_size or int(cfg.get("input_size", (3, 224, 224))[-1])
        return {
            "img_size": size,
            "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "interpolation": str(cfg.get("interpolation", "bilinear")),
        }


def _create_body(name: str, pretrained: bool, kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    """timm.create_model(features_only) with one-line errors; also returns what timm's loading reported."""
    import timm

    from fgcli.pretrained import capture_timm_load

    try:
        with capture_timm_load() as timm_load:  # what timm's pretrained loading reports, for our log
            body = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:  # e.g. img_size not accepted
        raise UserError(f"backbone '{name}' cannot be built with {kwargs}: {e}") from e
    except RuntimeError as e:
        if "features_only" in str(e) or "feature" in str(e).lower():
            raise UserError(f"backbone '{name}' does not provide multi-scale features in timm "
                            "(features_only). Choose a CNN, ConvNeXt, EfficientNet or Swin backbone.") from e
        raise
    except Exception as e:  # download failures: offline, no cache
        if pretrained and _looks_like_network_error(e):
            raise UserError(
                f"could not fetch pretrained weights for '{name}' ({type(e).__name__}); this machine may "
                "be offline. Pass --pretrained-file PATH (a local state dict or an installed weights "
                "package, e.g. efficientnet-lite0) or --no-pretrained.") from e
        raise
    return body, timm_load


def build_backbone(model_cfg: Any, img_size: int | None = None, num_stages: int = 4) -> Backbone:
    """Build a Backbone from the config's `model` section."""
    return Backbone(
        model_cfg.backbone,
        pretrained=model_cfg.pretrained,
        pretrained_file=model_cfg.pretrained_file,
        pretrained_strict=model_cfg.pretrained_strict,
        img_size=img_size,
        drop_path=model_cfg.drop_path,
        num_stages=num_stages,
        output_stride=model_cfg.output_stride,
    )


def _looks_like_network_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(k in text for k in ("connect", "offline", "resolve", "network", "huggingface", "hub", "timed out",
                                    "localentrynotfound", "urlopen", "http"))
