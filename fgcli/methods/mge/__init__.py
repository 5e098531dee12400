"""MGE-CNN: a mixture of granularity-specific experts (spec/mge.md), as a method plug-in.

Modules: `config` (its `mge.*` section and checks), `crops` (batched CAM -> box -> zoomed crop steps), `model`
(the registered `MGE` method and its losses) and `viz` (its attention-viz panels). Importing the package is
light (no torch): the model's names load on use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MGE", "diversity_official", "diversity_paper"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fgcli.methods.mge import model

        return getattr(model, name)
    raise AttributeError(f"module 'fgcli.methods.mge' has no attribute {name!r}")
