"""Which panels each method shows, laid out in rows (a grid figure) or saved one by one (`--layout single`).

A method's own panels live in its folder (`fgcli/methods/<method>/viz.py`, `panels`); a method without one
gets `generic_panels`. The building blocks (`input_panel`, `heat_panel`) are shared."""

from __future__ import annotations

from typing import Any

import numpy as np

from fgcli.viz.maps import ImageMaps, method_viz
from fgcli.viz.render import Canvas, ImageInfo, Panel, _short, topk_panel


def method_panels(info: ImageInfo, maps: ImageMaps, classes: list[str], alpha: float) -> list[list[Panel | None]]:
    """Rows of panels for one image, by method."""
    canvas = Canvas(info, alpha)
    build = getattr(method_viz(maps.method), "panels", generic_panels)
    return build(canvas, info, maps, classes)


def generic_panels(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
    """Any method: the input, each map of its `attention()` over the image, the top classes."""
    heats = [heat_panel(canvas, key, f"{key} ('{_short(classes[maps.pred])}')", value)
             for key, value in maps.maps.items()]
    return [[input_panel(canvas), *heats, topk_panel(maps, classes, info.true_label)]]


def input_panel(canvas: Canvas, title: str = "input (dashed: the model's crop)") -> Panel:
    def draw(ax: Any) -> bool:
        canvas.image(ax)
        return False

    return Panel("input", title if canvas.outside.any() else "input", draw)


def heat_panel(canvas: Canvas, key: str, title: str, crop_map: np.ndarray,
          boxes: list[tuple[tuple[float, float, float, float], str, str, str]] | None = None) -> Panel:
    """A heat map over the image, with boxes given as (box, colour, label, linestyle)."""
    def draw(ax: Any) -> bool:
        canvas.heat(ax, crop_map)
        for box, colour, label, style in boxes or []:
            canvas.box(ax, box, colour, label, linestyle=style)
        return True

    return Panel(key, title, draw)


