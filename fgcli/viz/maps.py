"""Run a method's own `attention()` on a batch and split the result into per-image, plain-numpy records.

No map is recomputed here: HERBS's score / selection maps, MGE-CNN's CAMs, boxes and crops and the
baseline's CAM all come from the method's `attention()`, the code the model runs. This module only moves
them to numpy, normalises them to [0, 1] for display and scoring, and names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fgcli.engine.fused import combine_views
from fgcli.modelinfo import Preprocess
from fgcli.viz.geometry import upsample


@dataclass
class ImageMaps:
    """Everything drawn for one image.

    `maps`: the scored maps on the input-crop grid (size x size, [0, 1], NaN = not seen), in display order.
    `extra`: method-specific values (HERBS: tau/cls/disagree/peak per stage; MGE-CNN: boxes, crops, gate, ...).
    `boxes`: the scored boxes, inclusive pixel-centre (x1, y1, x2, y2) on the input-crop grid (MGE-CNN's zooms).
    """

    method: str
    pred: int
    probs: np.ndarray
    input_rgb: np.ndarray  # the model's input (size x size x 3, [0, 1]): what the network saw
    maps: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (NaN kept); a constant map becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return values
    low, high = finite.min(), finite.max()
    return (values - low) / (high - low) if high > low else np.where(np.isfinite(values), 0.0, np.nan)


def maxnorm(values: np.ndarray) -> np.ndarray:
    """Divide a non-negative map by its maximum (NaN kept); an all-zero map stays zero."""
    values = np.asarray(values, dtype=np.float64)
    peak = np.nanmax(values) if np.isfinite(values).any() else 0.0
    return values / peak if peak > 0 else values


def denormalize(images: torch.Tensor, pre: Preprocess) -> np.ndarray:
    """B x 3 x H x W normalised tensor -> B x H x W x 3 float array in [0, 1]."""
    mean = images.new_tensor(pre.mean)[None, :, None, None]
    std = images.new_tensor(pre.std)[None, :, None, None]
    return (images.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def method_viz(method: str) -> Any | None:
    """The method's own viz module: its class's `viz_module`, else `<the package of its module>.viz`, with
    `image_maps`, `panels` and `notes`, each optional. None (no such module): every map of its `attention()` is
    shown as it is (`generic_maps`, `panels.generic_panels`)."""
    import importlib

    from fgcli.methods import get_method

    cls = get_method(method)
    package = cls.__module__.rpartition(".")[0]
    name = getattr(cls, "viz_module", None) or (f"{package}.viz" if package else None)
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


@torch.no_grad()
def attention_maps(model: Any, method: str, images: torch.Tensor, pre: Preprocess,
                   temperature: float = 1.0) -> list[ImageMaps]:
    """`model.attention(images)` -> one ImageMaps per image (images: B x 3 x size x size, normalised); the
    probabilities are calibrated with `temperature` (fgcli.engine.fused)."""
    out = model.attention(images)
    logits = out["fused"] if "fused" in out else out["logits"] if "logits" in out else model.predict(images)
    probs = combine_views([logits], temperature)[1].cpu().numpy()
    rgb = denormalize(images, pre)
    split = getattr(method_viz(method), "image_maps", generic_maps)
    return [split(out, i, pre, method, probs[i], rgb[i]) for i in range(images.shape[0])]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def generic_maps(out: dict[str, torch.Tensor], i: int, pre: Preprocess, method: str, probs: np.ndarray,
                 rgb: np.ndarray) -> ImageMaps:
    """Any method: every B x h x w tensor of `attention()` is a map (upsampled to the input, min-max scaled);
    the predicted class is `pred`, else the top class."""
    maps = {k: minmax(upsample(to_numpy(v[i]), pre.img_size)) for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.ndim == 3 and k not in ("fused", "logits")}
    pred = int(out["pred"][i]) if "pred" in out else int(np.argmax(probs))
    return ImageMaps(method, pred, probs, rgb, maps)
