"""Timing: how long a call takes, and latency / throughput of a Predictor per batch size. The one timing helper
of `fgcli bench`, export's int8 speed check and the scripts in benchmarks/."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fgcli.console import log, track
from fgcli.inference import Predictor


@dataclass
class BenchRow:
    """One backend x batch size measurement (latencies per batch, in milliseconds)."""

    backend: str
    device: str
    batch: int
    img_size: int
    threads: int
    iters: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # images per second, from the mean latency
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8
    agreement: float | None = None  # top-1 agreement with the reference backend, percent (fgcli bench)
    max_dprob: float | None = None  # max |Δprob| against the reference backend (softmax of the fused logits)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int,
               sync: Callable[[], Any] | None = None, description: str | None = None) -> np.ndarray:
    """Seconds per call of `fn` over `iters` timed calls after `warmup` untimed ones; `sync` (e.g.
    torch.cuda.synchronize) runs after every call, inside the timed part, so asynchronous work is counted.
    With a `description`, a progress bar counts the timed calls (it is drawn between them, outside the timing)."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = np.empty(iters)
    for i in (range(iters) if description is None else track(range(iters), description)):
        start = time.perf_counter()
        fn()
        sync()
        times[i] = time.perf_counter() - start
    return times


def summarize(times: np.ndarray, backend: str, device: str, batch: int, img_size: int, threads: int) -> BenchRow:
    """p50 / p90 / mean latency and throughput of `times` (seconds per batch)."""
    ms = times * 1000.0
    mean = float(ms.mean())
    return BenchRow(backend=backend, device=device, batch=batch, img_size=img_size, threads=threads,
                    iters=len(times), p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
                    mean_ms=mean, throughput=batch * 1000.0 / mean)


def bench_predictor(predictor: Predictor, batch_sizes: Sequence[int], img_size: int, threads: int,
                    warmup: int = 3, iters: int = 20, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Time `predictor.run` on seeded random inputs for each batch size (the same inputs for every backend)."""
    rows = []
    for batch in batch_sizes:
        if predictor.fixed_batch is not None and batch != predictor.fixed_batch:
            log.warning(f"{predictor.backend}: the model has a static batch of {predictor.fixed_batch}; skipping "
                        f"batch {batch} (export with --dynamic-batch to measure it)")
            continue
        x = np.random.default_rng(seed + batch).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
        if progress is not None:
            progress(f"{predictor.backend} batch {batch}")
        times = time_calls(lambda x=x: predictor.run(x), warmup, iters,
                           description=f"timing {predictor.backend} batch {batch}")
        rows.append(summarize(times, predictor.backend, predictor.device, batch, img_size, threads))
    return rows
