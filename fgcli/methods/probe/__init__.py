"""The linear probe: the baseline's model (backbone + GAP + Linear) with the backbone frozen and the Linear layer
fitted once, to convergence, on cached features (fgcli.engine.probe). Modules: `config` (its `probe.*` section)
and `model` (the registered `Probe`). Importing the package is light (no torch): `Probe` loads on use."""

from __future__ import annotations

from typing import Any

__all__ = ["Probe"]


def __getattr__(name: str) -> Any:
    if name == "Probe":
        from fgcli.methods.probe.model import Probe

        return Probe
    raise AttributeError(f"module 'fgcli.methods.probe' has no attribute {name!r}")
