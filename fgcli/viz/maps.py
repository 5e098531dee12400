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
    """

    method: str
    pred: int
    probs: np.ndarray
    input_rgb: np.ndarray  # the model's input (size x size x 3, [0, 1]): what the network saw
    maps: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


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


@torch.no_grad()
def attention_maps(model: Any, method: str, images: torch.Tensor, pre: Preprocess,
                   temperature: float = 1.0) -> list[ImageMaps]:
    """`model.attention(images)` -> one ImageMaps per image (images: B x 3 x size x size, normalised); the
    probabilities are calibrated with `temperature` (fgcli.engine.fused)."""
    if method == "mge":
        out = model.attention(images, mean=tuple(pre.mean), std=tuple(pre.std))
        logits = out["logits"]
    else:
        out = model.attention(images)
        logits = out["fused"] if "fused" in out else model.predict(images)
    probs = combine_views([logits], temperature)[1].cpu().numpy()
    rgb = denormalize(images, pre)
    split = {"baseline": _baseline, "herbs": _herbs, "mge": _mge}.get(method, _baseline)
    return [split(out, i, pre.img_size, method, probs[i], rgb[i]) for i in range(images.shape[0])]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _baseline(out: dict[str, torch.Tensor], i: int, size: int, method: str, probs: np.ndarray,
              rgb: np.ndarray) -> ImageMaps:
    cam = upsample(_np(out["cam"][i]), size)  # h x w feature grid -> input size, half-pixel centres
    return ImageMaps(method, int(out["pred"][i]), probs, rgb, {"cam": maxnorm(cam)})


def herbs_stages(out: dict[str, torch.Tensor]) -> list[int]:
    """The stage numbers present in a HERBS attention output (1..4)."""
    return sorted(int(k[5:]) for k in out if k.startswith("score") and k[5:].isdigit())


def _herbs(out: dict[str, torch.Tensor], i: int, size: int, method: str, probs: np.ndarray,
           rgb: np.ndarray) -> ImageMaps:
    maps: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {"stages": herbs_stages(out)}
    for s in extra["stages"]:
        score = _np(out[f"score{s}"][i])
        maps[f"score{s}"] = minmax(score)
        extra[f"peak{s}"] = float(score.max())
        extra[f"tau{s}"] = float(out[f"tau{s}"][i])
        extra[f"cls{s}"] = int(out[f"cls{s}"][i])
        extra[f"disagree{s}"] = bool(out[f"disagree{s}"][i])
    maps["score_prod"] = maxnorm(_np(out["score_prod"][i]))
    for s in extra["stages"]:
        maps[f"select{s}"] = _np(out[f"select{s}"][i])
    maps["select_mean"] = _np(out["select_mean"][i])
    return ImageMaps(method, int(out["pred"][i]), probs, rgb, maps, extra)


def mge_experts(out: dict[str, torch.Tensor]) -> list[int]:
    """The expert numbers present in an MGE-CNN attention output (1..E)."""
    return sorted(int(k[3:]) for k in out if k.startswith("cam") and k[3:].isdigit())


def _mge(out: dict[str, torch.Tensor], i: int, size: int, method: str, probs: np.ndarray,
         rgb: np.ndarray) -> ImageMaps:
    experts = mge_experts(out)
    maps = {f"cam{e}": _np(out[f"cam{e}_image"][i]) for e in experts}
    extra: dict[str, Any] = {"experts": experts, "gate": _np(out["gate"][i])}
    for e in experts:
        extra[f"cam{e}_own"] = _np(out[f"cam{e}"][i])
        extra[f"class{e}"] = int(out[f"class{e}"][i])
        extra[f"top1_{e}"] = int(out[f"top1_{e}"][i])
        extra[f"region{e}"] = _np(out[f"region{e}"][i])
        if f"box{e}" in out:
            extra[f"box{e}"] = _np(out[f"box{e}"][i])
            extra[f"box{e}_image"] = _np(out[f"box{e}_image"][i])
        extra[f"crop{e}"] = rgb if e == 1 else np.transpose(_np(out[f"crop{e}"][i]), (1, 2, 0)).clip(0, 1)
    return ImageMaps(method, int(out["logits"][i].argmax()), probs, rgb, maps, extra)
