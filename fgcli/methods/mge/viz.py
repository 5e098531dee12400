"""MGE-CNN in attention-viz: each expert's CAM warped onto the image, the crop boxes passed from expert to
expert, the zoomed crops each expert saw, and the gate weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fgcli.modelinfo import Preprocess
from fgcli.viz.maps import ImageMaps, denormalize, to_numpy
from fgcli.viz.panels import heat_panel
from fgcli.viz.render import BOX_COLOURS, Canvas, ImageInfo, Panel, _short, bars, crop_heat


def mge_experts(out: dict[str, torch.Tensor]) -> list[int]:
    """The expert numbers present in an MGE-CNN attention output (1..E)."""
    return sorted(int(k[3:]) for k in out if k.startswith("cam") and k[3:].isdigit())


def image_maps(out: dict[str, torch.Tensor], i: int, pre: Preprocess, method: str, probs: np.ndarray,
               rgb: np.ndarray) -> ImageMaps:
    """Expert CAMs on the image, plus boxes, de-normalised crops, gate weights and each expert's class."""
    experts = mge_experts(out)
    maps = {f"cam{e}": to_numpy(out[f"cam{e}_image"][i]) for e in experts}
    extra: dict[str, Any] = {"experts": experts, "gate": to_numpy(out["gate"][i])}
    for e in experts:
        extra[f"cam{e}_own"] = to_numpy(out[f"cam{e}"][i])
        extra[f"class{e}"] = int(out[f"class{e}"][i])
        extra[f"top1_{e}"] = int(out[f"top1_{e}"][i])
        extra[f"region{e}"] = to_numpy(out[f"region{e}"][i])
        if f"box{e}" in out:
            extra[f"box{e}"] = to_numpy(out[f"box{e}"][i])
            extra[f"box{e}_image"] = to_numpy(out[f"box{e}_image"][i])
        extra[f"crop{e}"] = rgb if e == 1 else denormalize(out[f"crop{e}"][i:i + 1], pre)[0]
    boxes = {f"box{e}": extra[f"box{e}_image"] for e in experts if f"box{e}_image" in extra}
    return ImageMaps(method, int(out["logits"][i].argmax()), probs, rgb, maps, extra, boxes)


def panels(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
    """Top row: input with the crop boxes, each expert's CAM on the image; bottom: gate weights, each
    expert's input (the zoomed crop) with its CAM."""
    ex = maps.extra
    geo = info.geometry
    experts = ex["experts"]
    boxes = {e: geo.box_to_original(ex[f"box{e}_image"]) for e in experts if f"box{e}_image" in ex}

    def colour(e: int) -> str:
        return BOX_COLOURS[(e - 1) % len(BOX_COLOURS)]

    def inputs(ax: Any) -> bool:
        canvas.image(ax)
        for e, box in boxes.items():
            canvas.box(ax, box, colour(e), f"zoom {e + 1}", corner="top" if e % 2 else "bottom")
        return False

    top: list[Panel | None] = [Panel("input", "input + crop boxes", inputs)]
    bottom: list[Panel | None] = [_gate_panel(maps, classes)]
    for e in experts:
        drawn = []
        if e - 1 in boxes:  # the region this expert saw (dashed) and the box it passes on (solid)
            drawn.append((boxes[e - 1], colour(e - 1), "", "--"))
        if e in boxes:
            drawn.append((boxes[e], colour(e), "", "-"))
        top.append(heat_panel(canvas, f"cam{e}", f"expert {e} CAM on the image\nclass: "
                         f"{_short(classes[ex[f'class{e}']], 20)}", maps.maps[f"cam{e}"], drawn))
        bottom.append(_crop_panel(maps, e, canvas.alpha))
    return [top, bottom]


def _crop_panel(maps: ImageMaps, e: int, alpha: float) -> Panel:
    from matplotlib.patches import Rectangle

    ex = maps.extra
    title = "expert 1 input (the crop)" if e == 1 else f"expert {e} input (zoom {e})"

    def draw(ax: Any) -> bool:
        crop_heat(ax, ex[f"crop{e}"], ex[f"cam{e}_own"], alpha)
        if f"box{e}" in ex:
            x1, y1, x2, y2 = (float(v) for v in ex[f"box{e}"])
            colour = BOX_COLOURS[(e - 1) % len(BOX_COLOURS)]
            ax.add_patch(Rectangle((x1, y1), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=colour, linewidth=2))
        return True

    return Panel(f"crop{e}", title + f" · g = {float(ex['gate'][e - 1]):.2f}", draw)


def _gate_panel(maps: ImageMaps, classes: list[str]) -> Panel:
    ex = maps.extra
    labels = [f"E{e}: {_short(classes[ex[f'top1_{e}']], 14)}" for e in ex["experts"]]
    values = [float(g) for g in ex["gate"]]
    return Panel("gate", "gate weights (expert: its top-1)",
                 lambda ax: bars(ax, labels, values, "", highlight=int(np.argmax(values)), fmt="{:.2f}"))
