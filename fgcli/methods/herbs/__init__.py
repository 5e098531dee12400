"""HERBS: high-temperature refinement and background suppression (spec/herbs.md), as a method plug-in.

Modules: `taps` (backbone -> token maps), `neck` (top-down / bottom-up paths, per-token classifiers),
`selector` (batched background-suppression selection), `combiner` (graph-convolution head), `losses`
(loss terms and the temperature schedule) and `model` (the registered `Herbs` method).
"""

from fgcli.methods.herbs.model import Herbs

__all__ = ["Herbs"]
