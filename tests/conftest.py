"""Shared fixtures: an isolated fgcli cache per session, tiny prepared demo data sets, the flowers12 subset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FLOWERS12 = SHARED / "data" / "flowers12"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread in every test: on a shared 2-core machine, OpenMP spin-waits of competing
    processes make 2 threads many times slower (tests that time things set their thread count themselves)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _isolated_fgcli_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FGCLI_CACHE points at a per-session temp folder: tests never write to ~/.cache/fgcli."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("fgcli-cache")
    patch.setenv("FGCLI_CACHE", str(cache))
    yield cache
    patch.undo()


@pytest.fixture(scope="session")
def demo_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., object]:
    """`demo_factory(size=32, classes=4, per_class=8, val_fraction=0.25, seed=0)` -> PreparedDataset.

    Each parameter set is generated once per session (in a temp folder) and then reused.
    """
    from fgcli.data.demo import DemoParams
    from fgcli.data.prepare import PrepareOptions, prepare_dataset

    made: dict[tuple, object] = {}

    def make(size: int = 32, classes: int = 4, per_class: int = 8, val_fraction: float = 0.25,
             seed: int = 0) -> object:
        key = (size, classes, per_class, val_fraction, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"demo-{size}px-{classes}c-{per_class}")
            made[key] = prepare_dataset("demo", None, out, PrepareOptions(val_fraction=val_fraction, seed=seed,
                                                                          workers=1),
                                        DemoParams(seed=seed, size=size, classes=classes, per_class=per_class))
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_demo(demo_factory: Callable[..., object]) -> object:
    """A prepared demo data set: 4 classes, 32 px, 8 train (6 train + 2 val) and 2 test images per class."""
    return demo_factory()


@pytest.fixture(scope="session")
def flowers12() -> Path:
    """The shared 12-class Oxford Flowers subset (ImageFolder with train/ and test/), or skip."""
    if not (FLOWERS12 / "train").is_dir():
        pytest.skip("../shared/data/flowers12 not found")
    return FLOWERS12
