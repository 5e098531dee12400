"""The baseline (backbone + pooling + one linear classifier), as a method plug-in: `config`, `model`, `viz`.
Importing the package is light (no torch): `Baseline` loads on use."""

from __future__ import annotations

from typing import Any

__all__ = ["Baseline"]


def __getattr__(name: str) -> Any:
    if name == "Baseline":
        from fgcli.methods.baseline.model import Baseline

        return Baseline
    raise AttributeError(f"module 'fgcli.methods.baseline' has no attribute {name!r}")
