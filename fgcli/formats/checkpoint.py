"""The fgcli checkpoint (`.pt`; a file of any other unregistered name is read as one too): the torch model
itself, the only format with per-head scores and attention maps, and the source every export starts from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fgcli.formats import ModelFormat, register_format

if TYPE_CHECKING:
    from fgcli.inference import Predictor
    from fgcli.options import LoadOptions


def _load(path: Path, options: LoadOptions) -> Predictor:
    from fgcli.inference import TorchPredictor

    return TorchPredictor(path, device=options.device, threads=options.threads, use_ema=options.ema,
                          calibration=options.calibration, tta=options.tta)


register_format(ModelFormat(name="torch", title="fgcli checkpoint", family="torch", precision="fp32",
                            suffixes=(".pt", ".pth"), runtime="torch", load=_load, modules=("torch",), heads=True,
                            fallback=True))
