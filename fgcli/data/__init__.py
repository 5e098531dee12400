"""Data sets: official-layout readers, image checks, the synthetic demo, manifests, transforms and loaders.

Light imports only here (no torch): `fgcli.data.transforms`, `.dataset` and `.loaders` import torch and are
imported by the engine where needed.
"""

from fgcli.data.manifest import PreparedDataset, Sample, load_prepared
from fgcli.data.prepare import PrepareOptions, prepare_dataset, resolve_data, resolve_dataset

__all__ = ["PrepareOptions", "PreparedDataset", "Sample", "load_prepared", "prepare_dataset", "resolve_data",
           "resolve_dataset"]
