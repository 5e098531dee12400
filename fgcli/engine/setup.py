"""Run setup shared by the trainer and the benchmarks: seeding, determinism and the data loaders (AMP and
channels_last: fgcli.engine.speed)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fgcli.config import Config
from fgcli.engine import distributed as D
from fgcli.errors import UserError


# -- seeding ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's random."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of epoch `epoch` on `rank`: a function of these only, never of what ran before."""
    return (int(seed) * 1_000_003 + 7919 * (epoch + 1) + 104_729 * rank) % (2**31 - 1)


def set_loader_epoch(loader: Any, seed: int, epoch: int) -> None:
    """Make the loader's shuffling and each sample's augmentation a function of (seed, epoch) only."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        gen = getattr(sampler, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(epoch_seed(seed, epoch))
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(epoch_seed(seed, epoch))
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "aug_seed"):  # per-sample augmentation seeds: independent of workers and processes
        dataset.aug_seed = epoch_seed(seed, epoch)


def configure_determinism(cfg: Config, device: torch.device) -> None:
    """Deterministic algorithms when asked; cudnn.benchmark otherwise on CUDA."""
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# -- data ------------------------------------------------------------------------------------------------
@dataclass
class DataBundle:
    """Everything the loop needs from the data side."""

    dataset: Any
    classes: list[str]
    preprocess: Any
    train_loader: Any
    val_loader: Any | None
    val_count: int
    info: dict[str, Any]


def backbone_defaults(model: nn.Module) -> dict[str, Any]:
    """Preprocessing defaults of the method's first Backbone module (generic: no method-specific code)."""
    from fgcli.backbones import Backbone

    for module in model.modules():
        if isinstance(module, Backbone):
            return module.default_preprocess()
    return {}


def load_dataset(cfg: Config, info: D.DistInfo) -> Any:
    """Resolve the data set once per machine (rank 0 first, so that generated / cached files are written once)."""
    from fgcli.data.prepare import resolve_data

    def _resolve() -> Any:
        return resolve_data(cfg.data)

    if not info.enabled:
        return _resolve()
    dataset = _resolve() if info.is_main else None
    D.barrier(info)
    return dataset if dataset is not None else _resolve()


def build_data(cfg: Config, dataset: Any, preprocess: Any, info: D.DistInfo) -> DataBundle:
    """Train / val loaders (train: distributed sampler under DDP; val: unpadded per-rank shards)."""
    from fgcli.data.loaders import build_loader
    from fgcli.data.transforms import build_transform, eval_transform

    crop_bottom = int(getattr(dataset, "crop_bottom", 0) or 0)
    train_samples = dataset.split("train")
    if not train_samples:
        raise UserError(f"data set {cfg.data.path} has no training images (split 'train' is empty).")
    val_samples = validation_samples(cfg, dataset)
    world = info.world_size
    if len(train_samples) < cfg.train.batch_size * world:
        raise UserError(f"--batch-size {cfg.train.batch_size} x {world} process(es) is larger than the "
                        f"{len(train_samples)} training images; lower --batch-size.")
    train_loader = build_loader(train_samples, dataset.source_root, build_transform(preprocess, cfg.data, True),
                                cfg.train.batch_size, train=True, workers=cfg.data.workers,
                                distributed=info.enabled, seed=cfg.train.seed, crop_bottom=crop_bottom,
                                # fresh workers each epoch, seeded from the per-epoch generator: epoch e's
                                # augmentation does not depend on the epochs before it (exact resume)
                                persistent=False, decoder=cfg.data.decoder)
    val_loader = None
    if val_samples:
        val_loader = build_loader(D.shard(val_samples, info), dataset.source_root, eval_transform(preprocess),
                                  cfg.train.batch_size, train=False, workers=cfg.data.workers,
                                  distributed=False, seed=cfg.train.seed, crop_bottom=crop_bottom,
                                  decoder=cfg.data.decoder)
    meta = dataset_meta(cfg, dataset, len(train_samples), len(val_samples))
    return DataBundle(dataset, list(dataset.classes), preprocess, train_loader, val_loader, len(val_samples), meta)


def dataset_meta(cfg: Config, dataset: Any, num_train: int, num_val: int) -> dict[str, Any]:
    """What a checkpoint records about its data (`dataset`)."""
    return {"name": dataset.name, "format": dataset.format, "num_train": num_train, "num_val": num_val,
            "val_split": cfg.data.val_split, "root": str(dataset.root), "source_root": str(dataset.source_root)}


def validation_samples(cfg: Config, dataset: Any) -> list:
    """The samples of `data.val_split` (never the test split)."""
    name = cfg.data.val_split
    if name == "test":
        raise UserError("data.val_split=test would pick best.pt on the test split; validate on 'val' (carved "
                        "from train with data.val_fraction when the data set has no official val split).")
    return list(dataset.splits.get(name) or [])
