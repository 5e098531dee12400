"""The torch Dataset over a prepared manifest; an unreadable file never stops an epoch."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fgcli.console import log
from fgcli.data.images import load_rgb, load_rgb_tensor
from fgcli.data.manifest import Sample
from fgcli.errors import UserError

#: how training images are decoded: PIL (any format), or torchvision's libjpeg-turbo for JPEGs (faster)
DECODERS = ("pil", "torchvision")


class ManifestDataset(Dataset):
    """`(image tensor, label)` (or `(image, label, index)`) for each Sample, images read with `load_rgb`.

    A file that fails to load is reported once (a warning) and replaced by the next loadable sample in
    manifest order, so runs stay deterministic; `failed_count` / `failed_paths` say how many were replaced.
    The failure flags live in shared memory, so they are seen across DataLoader worker processes.
    With `return_index`, the index is that of the sample actually returned.

    With `aug_seed` set (the training loader sets it each epoch), the random transform of sample i is seeded
    from (aug_seed, i) alone: the same augmentation whatever the number of loader workers or DDP processes,
    and the caller's random streams (torch, python, numpy) are left as they were.
    """

    def __init__(self, samples: Sequence[Sample], source_root: str | Path, transform: Callable | None = None,
                 crop_bottom: int = 0, return_index: bool = False, decoder: str = "pil") -> None:
        if decoder not in DECODERS:
            raise UserError(f"data.decoder must be one of {', '.join(DECODERS)}, got {decoder!r}.")
        self.decoder = decoder
        self.samples = list(samples)
        self.source_root = Path(source_root)
        self.transform = transform
        self.crop_bottom = int(crop_bottom)
        self.return_index = return_index
        self._failed = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()
        self.aug_seed: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def failed_count(self) -> int:
        return int(self._failed.sum())

    @property
    def failed_paths(self) -> list[str]:
        return [self.samples[i].path for i in torch.nonzero(self._failed).flatten().tolist()]

    @contextlib.contextmanager
    def _seeded(self, index: int) -> Iterator[None]:
        """torch's, python's and numpy's global random streams seeded from (aug_seed, index) inside, restored
        after (timm's RandAugment draws its ops from numpy, their magnitudes from python's `random`)."""
        if self.aug_seed is None:
            yield
            return
        state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed = (self.aug_seed * 1_000_003 + 7_919 * index) % (2 ** 63 - 1)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            try:
                yield
            finally:
                random.setstate(state)
                np.random.set_state(np_state)

    def load(self, index: int) -> Image.Image | torch.Tensor:
        """The RGB image of sample `index` (a PIL image, or a 3 x H x W uint8 tensor with the torchvision
        decoder), with the bottom `crop_bottom` rows removed."""
        path = self.source_root / self.samples[index].path
        if self.decoder == "torchvision":
            tensor = load_rgb_tensor(path)
            height = tensor.shape[1]
            return tensor[:, :height - self.crop_bottom] if 0 < self.crop_bottom < height - 1 else tensor
        image = load_rgb(path)
        if self.crop_bottom > 0 and image.height > self.crop_bottom + 1:
            image = image.crop((0, 0, image.width, image.height - self.crop_bottom))
        return image

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        n = len(self.samples)
        for step in range(n):
            j = (index + step) % n
            if self._failed[j]:
                continue
            try:
                image = self.load(j)
            except Exception as e:  # corrupt/missing file at training time: substitute, don't crash
                self._failed[j] = 1
                log.warning(f"could not load {self.source_root / self.samples[j].path} ({type(e).__name__}: "
                            f"{e}); using another image in its place. Re-run prepare-data to list bad files.")
                continue
            with self._seeded(j):
                tensor = self.transform(image) if self.transform is not None else image
            label = self.samples[j].label
            return (tensor, label, j) if self.return_index else (tensor, label)
        raise UserError(f"none of the {n} images under {self.source_root} could be loaded. Check the data folder "
                        "and run `fgcli prepare-data` again.")
