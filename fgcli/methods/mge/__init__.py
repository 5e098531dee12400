"""MGE-CNN: a mixture of granularity-specific experts (spec/mge.md), as a method plug-in.

Modules: `crops` (batched CAM -> box -> zoomed crop steps), `model` (the registered `MGE` method and its
losses) and `viz` (its attention-viz panels).
"""

from fgcli.methods.mge.model import MGE, diversity_official, diversity_paper

__all__ = ["MGE", "diversity_official", "diversity_paper"]
