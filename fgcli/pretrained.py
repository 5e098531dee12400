"""Loading local pretrained weights into a Backbone, with a report of what matched."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fgcli.console import log
from fgcli.errors import UserError

if TYPE_CHECKING:
    from fgcli.backbones import Backbone

_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "body.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with weights_only=True (unwrapping {'state_dict': ...} / {'model': ...})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pretrained-file {path} does not exist. Give a local .pt/.pth/.safetensors file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--pretrained-file {path} could not be read as weights ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}). Give a plain state dict saved with torch.save.") from e
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--pretrained-file {path} holds no tensor state dict.")
    return state


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_state_into(backbone: Backbone, state: dict[str, torch.Tensor], source: str,
                    strict: bool = True) -> dict[str, Any]:
    """Copy matching tensors into the backbone's timm body; report matched / missing / skipped keys."""
    target = backbone.body.state_dict()
    by_plain = {_strip(k): k for k in target}
    loaded: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, tensor in state.items():
        plain = _strip(key)
        if plain in by_plain:
            name = by_plain[plain]
            if tuple(target[name].shape) == tuple(tensor.shape):
                loaded[name] = tensor
            else:
                mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(target[name].shape)}")
        else:
            unexpected.append(key)
    missing = [k for k in target if k not in loaded and not k.endswith("num_batches_tracked")]
    report = {"source": source, "matched": len(loaded), "total": len(target), "missing": missing,
              "unexpected": unexpected, "mismatched": mismatched}
    if (missing or mismatched) and strict:
        detail = (mismatched + missing)[:5]
        raise UserError(f"pretrained weights {source} do not fit backbone '{backbone.name}': {len(loaded)} of "
                        f"{len(target)} tensors matched, {len(missing)} missing, {len(mismatched)} of wrong "
                        f"shape (e.g. {'; '.join(detail)}). Check --backbone, or pass --set "
                        "model.pretrained_strict=false to load what fits.")
    backbone.body.load_state_dict(loaded, strict=False)
    log.info(f"loaded {source}: {len(loaded)}/{len(target)} backbone tensors matched"
             + (f", {len(unexpected)} extra keys ignored (e.g. the classifier head)" if unexpected else ""))
    return report


def load_pretrained_file(backbone: Backbone, file: str, strict: bool = True) -> dict[str, Any]:
    """Load `file` (a path to a state dict) into the backbone and return the load report."""
    return load_state_into(backbone, read_state_dict(file), source=str(file), strict=strict)
