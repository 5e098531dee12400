"""Seeded, stratified carving of a held-out split (val or test) from a training list."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from fgcli.data.manifest import Sample


def carve(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split `samples` into (kept, held_out), taking round(n * fraction) of every class.

    Each class keeps at least one sample; the result depends only on the samples, `fraction` and `seed`
    (not on the input order), and both lists keep the input order.
    """
    if fraction <= 0 or not samples:
        return list(samples), []
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_class[s.label].append(i)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda i: samples[i].path)
        order = rng.permutation(len(members))
        count = min(len(members) - 1, int(round(len(members) * fraction)))
        held.update(members[j] for j in order[:count])
    kept = [s for i, s in enumerate(samples) if i not in held]
    out = [s for i, s in enumerate(samples) if i in held]
    return kept, out
