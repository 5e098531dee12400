"""fgcli: fine-grained visual classification (HERBS, MGE-CNN) from the command line and from Python.

The Python API (fgcli.api) is re-exported here lazily, so that `import fgcli` stays fast (no torch):
`fgcli.train`, `fgcli.evaluate`, `fgcli.export`, `fgcli.predict`, `fgcli.load`, `fgcli.bench`,
`fgcli.attention_viz`, `fgcli.prepare_data`, `fgcli.tune`, `fgcli.distill`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Model", "attention_viz", "bench", "calibrate", "distill", "evaluate", "export", "load", "predict",
        "prepare_data", "train", "tune")


def __getattr__(name: str) -> Any:
    if name in _API:
        from fgcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'fgcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
