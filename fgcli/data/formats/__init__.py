"""One small reader per source layout; each module has `detect(src) -> root | None` and `read(src, **opts)`."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from fgcli.errors import unknown_choice

# format name -> module; the order is the auto-detection order (most specific first).
READERS = {
    "nabirds": "nabirds",
    "cub": "cub",
    "aircraft": "aircraft",
    "cars": "cars",
    "dogs": "dogs",
    "flowers102": "flowers102",
    "csv": "csvfile",
    "imagefolder": "imagefolder",
}
FORMATS = (*READERS, "demo")


def reader(fmt: str) -> ModuleType:
    """The reader module of a format name, or a clear error listing the valid names."""
    if fmt not in READERS:
        raise unknown_choice("data set format", fmt, FORMATS)
    return importlib.import_module(f"fgcli.data.formats.{READERS[fmt]}")


def detect_format(src: Path) -> tuple[str, Path] | None:
    """(format, root) of the first reader that recognises `src`, or None."""
    for fmt in READERS:
        root = reader(fmt).detect(src)
        if root is not None:
            return fmt, root
    return None
