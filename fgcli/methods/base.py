"""The small interface every method implements; the engine knows nothing else about methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fgcli.config import Config
from fgcli.searchspace import COMMON_SPACE, Param


class Method(nn.Module):
    """A fine-grained classifier with named heads.

    Subclasses build their modules in `__init__(cfg, num_classes)` and implement:
      - `forward(images, targets=None) -> dict[str, Tensor]`: named head logits, each B x C (plus any
        extra tensors the loss needs, under keys listed in `aux_keys`). The engine passes `targets` in
        training only (MGE-CNN's attention uses the ground-truth class there); at inference it is None;
      - `fuse(outputs) -> Tensor`: the B x C logits of the final prediction (what eval reports first
        and what export ships);
      - `loss(outputs, targets, epoch) -> (total, {name: term})`; `targets` are class indices (B), or class
        probabilities (B x C) under mixup / CutMix when `soft_target_refusal()` is None; the cross-entropy
        terms on labels apply `train.label_smoothing` (`fgcli.methods.targets.cross_entropy` does both);
      - `attention(images) -> dict[str, Tensor]`: maps for visualisation (no autograd needed);
      - `param_groups(cfg)`: optimizer parameter groups (default: the backbone(s) at
        `lr * optim.backbone_lr_scale`, everything else at `lr`; weight decay is split by the engine).

    The backbone(s) are found as the `Backbone` submodules; `model.freeze: backbone` fixes them (no
    gradient, batch-norm statistics frozen: they stay in eval mode during training), `model.freeze_epochs: N`
    fixes them for the first N epochs only (head-first: the engine calls `unfreeze_backbones` at epoch N), and
    `model.freeze_bn_stats` keeps only their batch-norm statistics fixed while their weights train.
    """

    name: str = "method"
    #: keys of `forward`'s output that are not B x C head logits (excluded from per-head metrics)
    aux_keys: tuple[str, ...] = ()
    #: the backbone lr scale used when `optim.backbone_lr_scale` is null
    default_backbone_lr_scale: float = 1.0
    #: its hyper-parameters' dataclass: the config section `<name>.*` (None: it has none) and their range checks
    #: ((ok, message) pairs), declared in `<method>/config.py` and registered with the method
    config_class: type | None = None
    config_checks: Callable[[Any], list[tuple[bool, str]]] | None = None
    #: `fgcli tune`'s default search space (declared beside the method's config: `<method>/config.py`)
    search_space: tuple[Param, ...] = COMMON_SPACE
    #: the shipped recipe `fgcli tune --method NAME` starts from (None: the built-in defaults)
    tune_recipe: str | None = None
    #: how `fgcli train` fits it: "loop" (the engine's training loop) or "probe" (features of the frozen backbone
    #: computed once, its Linear head fitted to convergence: fgcli.engine.probe; the method then has the
    #: baseline's `features(images)` and `classifier`)
    fitted_by: str = "loop"
    #: whether `train.amp: auto` may choose CPU bf16 autocast for this method: only once two seeds on flowers102
    #: kept the mean val top-1 within 0.5 point of fp32 (README "Accelerator switches"); `--amp` always works
    auto_bf16: bool = False

    def __init_subclass__(cls, config: Any = None, **kwargs: Any) -> None:
        """`class Herbs(Method, config=herbs_config)`: the method brings its config module's CONFIG (its section's
        dataclass), `checks`, SEARCH_SPACE and TUNE_RECIPE (each optional)."""
        super().__init_subclass__(**kwargs)
        if config is None:
            return
        cls.config_class = getattr(config, "CONFIG", cls.config_class)
        if hasattr(config, "checks"):
            cls.config_checks = staticmethod(config.checks)  # type: ignore[assignment]
        cls.search_space = getattr(config, "SEARCH_SPACE", cls.search_space)
        cls.tune_recipe = getattr(config, "TUNE_RECIPE", cls.tune_recipe)

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

    def backbones(self) -> list[nn.Module]:
        """The pretrained trunk(s): every outermost `Backbone` submodule."""
        from fgcli.backbones import Backbone

        found: list[nn.Module] = []
        for module in self.modules():
            if isinstance(module, Backbone) and not any(module in f.modules() for f in found):
                found.append(module)
        return found

    def freeze_backbones(self) -> None:
        """Fix the backbone(s): no gradient, and `train()` keeps them in eval mode (frozen BN statistics)."""
        if self.backbones_frozen:
            return
        # remember what was trainable, so that unfreezing restores exactly that
        self._unfrozen_params = [p for trunk in self.backbones() for p in trunk.parameters() if p.requires_grad]
        for p in self._unfrozen_params:
            p.requires_grad_(False)
        for trunk in self.backbones():
            trunk.eval()
        self._frozen = True

    def unfreeze_backbones(self) -> None:
        """Undo `freeze_backbones`: the backbone(s) train again (gradients, batch-norm statistics updated)."""
        if not self.backbones_frozen:
            return
        for p in self._unfrozen_params:
            p.requires_grad_(True)
        self._frozen = False
        self.train(self.training)

    @property
    def backbones_frozen(self) -> bool:
        """Whether the backbone(s) are fixed now (`model.freeze`, or the first `model.freeze_epochs`)."""
        return bool(getattr(self, "_frozen", False))

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.backbones_frozen:
            for trunk in self.backbones():
                trunk.eval()
        elif mode and self.cfg.model.freeze_bn_stats:
            # the trunk's batch-norm layers normalise with (and keep) their pretrained running statistics;
            # their scale and shift still train
            for trunk in self.backbones():
                for module in trunk.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def backbone_lr_scale(self, cfg: Config) -> float:
        """`optim.backbone_lr_scale`, or this method's default when it is null."""
        scale = cfg.optim.backbone_lr_scale
        return float(self.default_backbone_lr_scale if scale is None else scale)

    def param_groups(self, cfg: Config) -> list[dict[str, Any]]:
        """The backbone(s) at `lr * backbone_lr_scale` (group "backbone"), the rest at `lr` ("heads")."""
        trunk_ids = {id(p) for trunk in self.backbones() for p in trunk.parameters()}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) in trunk_ids]
        heads = [p for p in self.parameters() if p.requires_grad and id(p) not in trunk_ids]
        groups = [{"params": backbone, "lr_scale": self.backbone_lr_scale(cfg), "name": "backbone"},
                  {"params": heads, "lr_scale": 1.0, "name": "heads"}]
        return [g for g in groups if g["params"]]

    def soft_target_refusal(self) -> str | None:
        """Why this method cannot train on mixed images (`train.mixup` / `train.cutmix`: B x C soft targets to
        `forward` and `loss`), or None when it can. Methods that accept them override this."""
        return f"method '{self.name}' does not say that its loss takes soft targets"

    def probe_head(self) -> nn.Linear | None:
        """The linear head that reads the global average of `features()` and nothing else, which
        `model.head_init: probe` fits on frozen features before training; None when the method has none."""
        return None

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Fused logits for a batch (what the exported graph computes)."""
        return self.fuse(self(images))

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """True when this configuration leaves some parameters without a gradient in every step (a loss term
        switched off); the engine then tells DDP (`fgcli.engine.distributed.ddp_options`)."""
        return False

    @property
    def input_size(self) -> int | None:
        """A fixed input size required by the model (token-mixing layers, Swin), or None if any size works."""
        return None
