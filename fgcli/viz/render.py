"""Figures (matplotlib, Agg, no pyplot state): per-method panels over the original image, a grid or singles.

Every heat map uses one colormap (`CMAP`) on a fixed 0..1 scale with a colour bar; every image keeps its
aspect ratio (axes in original-image pixels); what the model never saw (outside the centre crop) is dimmed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.io import atomic_write_bytes
from fgcli.viz.geometry import CropGeometry, display_size
from fgcli.viz.maps import ImageMaps

CMAP = "turbo"
PANEL_INCH = 2.7
DPI = 110
MAX_SIDE = 512  # display resolution of the original image (longer side), never upscaled
BOX_COLOURS = ("#00e5ff", "#ff3df5", "#ffe600")


@dataclass
class ImageInfo:
    """One input image and what is known about it."""

    name: str  # a short, unique label (also the PNG's stem)
    image: np.ndarray  # H x W x 3 uint8, the original (after any crop_bottom)
    geometry: CropGeometry
    true_label: int | None = None


@dataclass
class Panel:
    """One sub-figure: `draw(ax)` returns True when it shows a heat map (so it gets the colour bar)."""

    key: str
    title: str
    draw: Callable[[Any], bool]


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def headline(info: ImageInfo, maps: ImageMaps, classes: list[str], compact: bool = False) -> tuple[str, str]:
    """The figure title (true class when known, predicted class and probability) and its colour
    (green: correct, red: wrong, black: true class unknown). `compact`: two short lines for narrow figures."""
    true = "true class unknown" if info.true_label is None else f"true: {classes[info.true_label]}"
    pred = f"pred: {classes[maps.pred]} ({100 * float(maps.probs[maps.pred]):.1f}%)"
    text = f"{_short(true)}\n{pred}" if compact else f"{info.name}   |   {true}   |   {pred}"
    if info.true_label is None:
        return text, "black"
    return text, "#1a7f37" if info.true_label == maps.pred else "#cf222e"


class Canvas:
    """Draws on the original image (axes in original pixels). Overlays are blended in numpy: one image per axes."""

    def __init__(self, info: ImageInfo, alpha: float) -> None:
        self.info = info
        self.alpha = alpha
        h, w = info.image.shape[:2]
        self.w, self.h = w, h
        self.dw, self.dh = display_size(w, h, MAX_SIDE)
        self.shown = np.asarray(_resize(info.image, self.dw, self.dh), dtype=np.float64) / 255.0
        self.extent = (0.0, float(w), float(h), 0.0)  # continuous original-pixel coordinates
        seen = info.geometry.warp_map(np.ones((2, 2)), self.dw, self.dh)
        self.outside = ~np.isfinite(seen)

    def image(self, ax: Any) -> None:
        self._show(ax, self.shown)

    def heat(self, ax: Any, crop_map: np.ndarray) -> bool:
        warped = self.info.geometry.warp_map(crop_map, self.dw, self.dh)
        self._show(ax, blend(self.shown, warped, self.alpha))
        return True

    def keep(self, ax: Any, crop_mask: np.ndarray) -> bool:
        """Kept tokens at full brightness, suppressed background darkened, the boundary outlined."""
        warped = np.nan_to_num(self.info.geometry.warp_map(crop_mask, self.dw, self.dh), nan=0.0)
        self._show(ax, np.where((warped >= 0.5)[..., None], self.shown, self.shown * 0.28))
        if warped.max() > warped.min():
            xs = (np.arange(self.dw) + 0.5) * self.w / self.dw
            ys = (np.arange(self.dh) + 0.5) * self.h / self.dh
            ax.contour(xs, ys, warped, levels=[0.5], colors=["#00e5ff"], linewidths=0.9)
        return False

    def box(self, ax: Any, box: tuple[float, float, float, float], colour: str, label: str = "",
            linestyle: str = "-", corner: str = "top") -> None:
        """Draw (x1, y1, x2, y2) in original-image coordinates, with an optional label in a corner."""
        from matplotlib.patches import Rectangle

        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2.0,
                               linestyle=linestyle))
        if label:
            top = corner == "top"
            ax.text(x1 + 2, y1 + 2 if top else y2 - 2, label, color="black", fontsize=7,
                    va="top" if top else "bottom", ha="left",
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0, "alpha": 0.9})

    def _show(self, ax: Any, rgb: np.ndarray) -> None:
        if self.outside.any():  # what the model never saw: dimmed, the crop outlined
            rgb = np.where(self.outside[..., None], rgb * 0.45, rgb)
        ax.imshow(np.clip(rgb, 0, 1), extent=self.extent, interpolation="antialiased")
        if self.outside.any():
            from matplotlib.patches import Rectangle

            x1, y1, x2, y2 = self.info.geometry.crop_rect()
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linewidth=0.8,
                                   linestyle="--"))
        ax.set_xlim(0, self.w)
        ax.set_ylim(self.h, 0)
        ax.set_aspect("equal")
        ax.axis("off")


def blend(rgb: np.ndarray, values: np.ndarray, alpha: float) -> np.ndarray:
    """`rgb` (H x W x 3, 0..1) with `values` (H x W, 0..1, NaN = no overlay) coloured by CMAP at `alpha`."""
    from matplotlib import colormaps

    finite = np.isfinite(values)
    colours = colormaps[CMAP](np.clip(np.nan_to_num(values, nan=0.0), 0, 1))[..., :3]
    mixed = rgb * (1 - alpha) + colours * alpha
    return np.where(finite[..., None], mixed, rgb)


def crop_heat(ax: Any, rgb: np.ndarray, crop_map: np.ndarray | None, alpha: float) -> bool:
    """A square crop (the zoom an expert saw) with its own-grid map; axes in crop pixels."""
    shown = np.asarray(rgb, dtype=np.float64)
    if crop_map is not None:
        shown = blend(shown, upsample_to(crop_map, shown.shape[0], shown.shape[1]), alpha)
    ax.imshow(np.clip(shown, 0, 1), extent=(0.0, float(rgb.shape[1]), float(rgb.shape[0]), 0.0),
              interpolation="antialiased")
    ax.set_aspect("equal")
    ax.axis("off")
    return crop_map is not None


def upsample_to(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map already on the crop grid passes through; a coarser one is upsampled (same crop extent)."""
    if values.shape == (height, width):
        return values
    from fgcli.viz.geometry import upsample

    return upsample(values, height)


def bars(ax: Any, labels: list[str], values: list[float], title: str, highlight: int | None = None,
         fmt: str = "{:.0%}") -> bool:
    """Horizontal bars, largest first at the top, values printed at the bar ends."""
    y = np.arange(len(values))
    colours = ["#d9480f" if i == highlight else "#4c6ef5" for i in range(len(values))]
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, [_short(v, 22) for v in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, max(values) * 1.05) if values else 1.0)
    for yi, v in zip(y, values, strict=True):  # the value beside the bar, or inside a long one
        inside = v > 0.8
        ax.text(v - 0.02 if inside else v + 0.01, yi, fmt.format(v), va="center", ha="right" if inside else "left",
                fontsize=7, color="white" if inside else "black")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return False


def topk_panel(maps: ImageMaps, classes: list[str], true_label: int | None, k: int = 5) -> Panel:
    order = np.argsort(-maps.probs, kind="stable")[:k]
    labels = [classes[i] for i in order]
    values = [float(maps.probs[i]) for i in order]
    hit = next((j for j, i in enumerate(order) if i == true_label), None)
    return Panel("topk", f"top-{len(order)} (orange = true class)" if true_label is not None else f"top-{len(order)}",
                 lambda ax: bars(ax, labels, values, "", highlight=hit))


def figure(panels: list[list[Panel | None]], title: str, colour: str, aspect: float, with_bar: bool = True) -> Any:
    """A Figure with rows of equal cells (height = width * aspect), titles above, one shared colour bar.

    The layout is computed by hand (no constrained / tight layout: they cost seconds per figure).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    rows, cols = len(panels), max(len(r) for r in panels)
    aspect = min(max(aspect, 0.5), 2.0)
    pw, ph = PANEL_INCH, PANEL_INCH * aspect
    lines = title.count("\n") + 1
    left, gap, head, bottom, bar_w = 0.12, 0.14, 0.42, 0.12, (0.85 if with_bar else 0.0)
    top = 0.27 + 0.18 * lines
    width = left + cols * pw + (cols - 1) * gap + bar_w + 0.1
    height = top + rows * (head + ph) + bottom
    fig = Figure(figsize=(width, height), dpi=DPI)
    heat = False
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            if panel is None:
                continue
            x0 = (left + c * (pw + gap)) / width
            y0 = (height - top - (r + 1) * (head + ph) + 0.0) / height
            if panel.key in ("topk", "gate"):  # room for the class names and the x ticks
                rect = [x0 + 0.42 * pw / width, y0 + 0.3 / height, 0.55 * pw / width, (ph - 0.35) / height]
            else:
                rect = [x0, y0, pw / width, ph / height]
            ax = fig.add_axes(rect)
            heat = panel.draw(ax) or heat
            if panel.title:
                ax.set_title(panel.title, fontsize=8)
    if with_bar and heat:
        cax = fig.add_axes([(width - bar_w + 0.1) / width, 0.2, 0.12 / width, 0.6])
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=CMAP), cax=cax)
        bar.set_label("attention (scaled to 0–1 per map)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10, color=colour, y=1 - 0.12 / height, va="top")
    return fig


def save_png(fig: Any, path: Path) -> Path:
    """Render a Figure to PNG and write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))
