"""HERBS: high-temperature refinement and background suppression (spec/herbs.md), as a method plug-in.

Modules: `config` (its `herbs.*` section and checks), `taps` (backbone -> token maps), `neck` (top-down /
bottom-up paths, per-token classifiers), `selector` (batched background-suppression selection), `combiner`
(graph-convolution head), `losses` (loss terms and the temperature schedule), `model` (the registered `Herbs`
method) and `viz` (its attention-viz panels). Importing the package is light (no torch): `Herbs` loads on use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Herbs"]


def __getattr__(name: str) -> Any:
    if name == "Herbs":
        from fgcli.methods.herbs.model import Herbs

        return Herbs
    raise AttributeError(f"module 'fgcli.methods.herbs' has no attribute {name!r}")
