"""Images for verification, calibration and the int8 accuracy check: from the run's data when it is
reachable (the checkpoint's `config.data`), else seeded random inputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fgcli.console import track
from fgcli.modelinfo import Preprocess


@dataclass
class Batches:
    """Preprocessed image batches (N x 3 x H x W float32) with labels when they come from a data set."""

    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    source: str  # in words, e.g. "val images of data/flowers12" or "random inputs"

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.images)

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.images)


def spread(samples: list[Any], limit: int | None) -> list[Any]:
    """Up to `limit` samples evenly spaced over the list (so that most classes are represented)."""
    if limit is None or len(samples) <= limit:
        return list(samples)
    idx = np.linspace(0, len(samples) - 1, num=limit).round().astype(int)
    return [samples[i] for i in idx]


def iter_split(dataset: Any, split: str, preprocess: Preprocess, batch_size: int,
               limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches (images, labels) of a split, preprocessed like evaluation (eval_transform)."""
    from fgcli.data.loaders import build_loader
    from fgcli.data.transforms import eval_transform

    samples = spread(dataset.split(split), limit)
    loader = build_loader(samples, dataset.source_root, eval_transform(preprocess), batch_size, train=False,
                          workers=0, crop_bottom=dataset.crop_bottom)
    for batch in loader:
        yield batch[0].numpy().astype(np.float32, copy=False), batch[1].numpy()


def first_split(dataset: Any, names: tuple[str, ...]) -> str | None:
    """The first of `names` that the data set has images for."""
    return next((name for name in names if dataset.splits.get(name)), None)


def load_batches(dataset: Any | None, splits: tuple[str, ...], preprocess: Preprocess, count: int | None,
                 batch_size: int = 8, seed: int = 0, where: str = "") -> Batches:
    """`count` images (None = the whole split) from the first available split, else `count` random inputs."""
    split = first_split(dataset, splits) if dataset is not None else None
    if dataset is not None and split is not None:
        images, labels = [], []
        total = -(-min(count or len(dataset.split(split)), len(dataset.split(split))) // batch_size)
        for x, y in track(iter_split(dataset, split, preprocess, batch_size, count), f"loading {split} images",
                          total=total):
            images.append(x)
            labels.append(y)
        if images:
            return Batches(images, labels, f"{split} images of {where or dataset.root}")
    rng = np.random.default_rng(seed)
    n = count or 16
    size = preprocess.img_size
    images = [rng.standard_normal((min(batch_size, n - i), 3, size, size), dtype=np.float32)
              for i in range(0, n, batch_size)]
    return Batches(images, None, "random inputs")
