"""The baseline (backbone + pooling + one linear classifier), as a method plug-in: `model` and `viz`."""

from fgcli.methods.baseline.model import Baseline

__all__ = ["Baseline"]
