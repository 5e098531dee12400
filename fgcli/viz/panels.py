"""Which panels each method shows, laid out in rows (a grid figure) or saved one by one (`--layout single`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fgcli.viz.maps import ImageMaps
from fgcli.viz.render import BOX_COLOURS, Canvas, ImageInfo, Panel, _short, bars, crop_heat, topk_panel


def method_panels(info: ImageInfo, maps: ImageMaps, classes: list[str], alpha: float) -> list[list[Panel | None]]:
    """Rows of panels for one image, by method."""
    canvas = Canvas(info, alpha)
    build = {"herbs": _herbs, "mge": _mge}.get(maps.method, _baseline)
    return build(canvas, info, maps, classes)


def _input(canvas: Canvas, title: str = "input (dashed: the model's crop)") -> Panel:
    def draw(ax: Any) -> bool:
        canvas.image(ax)
        return False

    return Panel("input", title if canvas.outside.any() else "input", draw)


def _heat(canvas: Canvas, key: str, title: str, crop_map: np.ndarray,
          boxes: list[tuple[tuple[float, float, float, float], str, str, str]] | None = None) -> Panel:
    """A heat map over the image, with boxes given as (box, colour, label, linestyle)."""
    def draw(ax: Any) -> bool:
        canvas.heat(ax, crop_map)
        for box, colour, label, style in boxes or []:
            canvas.box(ax, box, colour, label, linestyle=style)
        return True

    return Panel(key, title, draw)


def _baseline(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
    cam = _heat(canvas, "cam", f"CAM of '{_short(classes[maps.pred])}'", maps.maps["cam"])
    return [[_input(canvas), cam, topk_panel(maps, classes, info.true_label)]]


def _herbs(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
    ex = maps.extra
    top: list[Panel | None] = [_input(canvas)]
    bottom: list[Panel | None] = [topk_panel(maps, classes, info.true_label)]
    for s in ex["stages"]:
        flag = " ≠ fused" if ex[f"disagree{s}"] else ""
        top.append(_heat(canvas, f"score{s}", f"stage {s} score σ (max {ex[f'peak{s}']:.2f})\n"
                         f"class ĉ: {_short(classes[ex[f'cls{s}']], 20)}{flag}", maps.maps[f"score{s}"]))
        keep = maps.maps[f"select{s}"]

        def draw(ax: Any, keep: np.ndarray = keep) -> bool:
            return canvas.keep(ax, keep)

        bottom.append(Panel(f"select{s}", f"stage {s} selected tokens ({100 * float(np.mean(keep)):.0f}%)\n"
                            f"τ = {ex[f'tau{s}']:.3f}", draw))
    top.append(_heat(canvas, "score_prod", "combined: product of\nthe stage scores", maps.maps["score_prod"]))
    bottom.append(_heat(canvas, "select_mean", "combined: share of stages\nthat keep each pixel",
                        maps.maps["select_mean"]))
    return [top, bottom]


def _mge(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
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
        top.append(_heat(canvas, f"cam{e}", f"expert {e} CAM on the image\nclass: "
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
