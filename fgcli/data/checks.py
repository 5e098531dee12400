"""Check many images in parallel (a process pool) with a rich progress bar."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from fgcli.console import progress_bar
from fgcli.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, ImageCheck, check_image

# Below this many files a pool costs more to start than it saves.
_POOL_THRESHOLD = 64


def default_workers() -> int:
    """Worker processes for image checks: the usable CPUs, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def check_images(paths: list[Path], *, workers: int | None = None, min_size: int = DEFAULT_MIN_SIZE,
                 max_pixels: int = DEFAULT_MAX_PIXELS, description: str = "checking images") -> list[ImageCheck]:
    """Fully decode every file (in `workers` processes); results in the order of `paths`."""
    workers = default_workers() if workers is None else max(1, workers)
    check = partial(check_image, min_size=min_size, max_pixels=max_pixels)
    results: list[ImageCheck] = []
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(paths))
        for result in _run(check, [str(p) for p in paths], workers):
            results.append(result)
            progress.advance(task)
    return results


def _run(check, paths: list[str], workers: int) -> Iterator[ImageCheck]:
    if workers <= 1 or len(paths) < _POOL_THRESHOLD:
        yield from map(check, paths)
        return
    chunksize = max(1, min(64, len(paths) // (workers * 8)))
    # spawn, not fork: the caller may run threads (rich's refresh thread, torch), and forking those is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_ignore_sigint) as pool:
        try:
            yield from pool.map(check, paths, chunksize=chunksize)
        except BaseException:  # Ctrl-C (or the caller stopped early): drop the queued checks, don't wait for them
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the main process, which stops them (no traceback from every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

