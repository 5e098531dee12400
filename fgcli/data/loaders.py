"""DataLoaders over manifests: seeded shuffling, DistributedSampler under DDP, pinned memory on CUDA."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from fgcli.console import log
from fgcli.data.dataset import ManifestDataset
from fgcli.data.manifest import Sample
from fgcli.memory import release_freed_memory


class TrimmingDataLoader(DataLoader):
    """A DataLoader that returns freed heap pages to the OS right before it forks workers, so that they do not
    pin a copy-on-write snapshot of the trainer's last step (fgcli.memory)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        if self.num_workers > 0 and (not self.persistent_workers or self._iterator is None):
            release_freed_memory()
        return super().__iter__()


def build_loader(samples: Sequence[Sample], source_root: str | Path, transform: Callable | None, batch_size: int,
                 train: bool, workers: int, distributed: bool = False, seed: int = 0, drop_last: bool | None = None,
                 crop_bottom: int = 0, return_index: bool = False, persistent: bool = True,
                 decoder: str = "pil") -> DataLoader:
    """A DataLoader over `samples`; shuffled (seeded) and dropping the last partial batch when `train`.

    Under `distributed`, a DistributedSampler shards the data (call `loader.sampler.set_epoch(epoch)` every
    epoch). The dataset is `loader.dataset` (a ManifestDataset: see its `failed_count`).
    """
    dataset = ManifestDataset(samples, source_root, transform, crop_bottom=crop_bottom, return_index=return_index,
                              decoder=decoder)
    drop_last = train if drop_last is None else drop_last
    if drop_last and len(dataset) < batch_size:
        log.warning(f"only {len(dataset)} images for batch size {batch_size}: keeping the partial batch")
        drop_last = False
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=drop_last) if distributed else None
    return TrimmingDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0 and persistent,  # False: workers re-seeded from `generator` each epoch
        generator=generator,
    )
