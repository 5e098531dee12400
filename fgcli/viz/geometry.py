"""Between the model's input (the eval crop) and the original image: warp maps out, bring masks and boxes in.

The eval transform resizes (shorter side or square, `Preprocess.resize_mode`) and centre-crops `img_size`.
Maps from `attention()` live on the crop grid (img_size x img_size). Every conversion here goes through
`fgcli.data.transforms.map_point_to_original`, the one formula the rest of fgcli uses, in continuous
coordinates (0 = the left / top edge; pixel i covers [i, i + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fgcli.data.transforms import map_point_to_original
from fgcli.modelinfo import Preprocess


@dataclass(frozen=True)
class CropGeometry:
    """How one image of `orig_w` x `orig_h` pixels became the model's input under `pre`."""

    orig_w: int
    orig_h: int
    pre: Preprocess

    @property
    def size(self) -> int:
        return self.pre.img_size

    def to_original(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Input-crop point(s) (u, v) -> original-image point(s) (x, y), continuous coordinates."""
        x, y = map_point_to_original(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64),
                                     self.orig_w, self.orig_h, self.pre)
        return np.asarray(x), np.asarray(y)

    def to_crop(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Original-image point(s) -> input-crop point(s): the inverse of `to_original` (it is affine)."""
        x0, y0 = self.to_original(0.0, 0.0)
        x1, y1 = self.to_original(1.0, 1.0)
        return ((np.asarray(x, dtype=np.float64) - x0) / (x1 - x0),
                (np.asarray(y, dtype=np.float64) - y0) / (y1 - y0))

    def crop_rect(self) -> tuple[float, float, float, float]:
        """The input crop's extent in the original image: (x1, y1, x2, y2), continuous coordinates."""
        x1, y1 = self.to_original(0.0, 0.0)
        x2, y2 = self.to_original(float(self.size), float(self.size))
        return float(x1), float(y1), float(x2), float(y2)

    def warp_map(self, crop_map: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
        """A map on the crop grid (any h x w covering the crop) -> a map over the original image, shown at
        `out_w` x `out_h` pixels (a scaled copy of the original). Bilinear; NaN outside the crop.
        """
        crop_map = np.asarray(crop_map, dtype=np.float64)
        mh, mw = crop_map.shape
        xs = (np.arange(out_w) + 0.5) * self.orig_w / out_w  # display pixel centres in original pixels
        ys = (np.arange(out_h) + 0.5) * self.orig_h / out_h
        u, _ = self.to_crop(xs, np.zeros_like(xs))
        _, v = self.to_crop(np.zeros_like(ys), ys)
        # crop-grid continuous coordinate -> map sample index (pixel centres at i + 0.5)
        col = u * mw / self.size - 0.5
        row = v * mh / self.size - 0.5
        out = _bilinear(crop_map, row[:, None], col[None, :])
        inside = ((v >= 0) & (v < self.size))[:, None] & ((u >= 0) & (u < self.size))[None, :]
        return np.where(inside, out, np.nan)

    def mask_to_crop(self, mask: np.ndarray) -> np.ndarray:
        """A boolean mask over the original image (orig_h x orig_w) -> the crop grid (size x size), sampled at
        each crop pixel's centre (nearest), exactly where the transform took that pixel from."""
        mask = np.asarray(mask).astype(bool)
        centres = np.arange(self.size) + 0.5
        xs, _ = self.to_original(centres, np.zeros_like(centres))
        _, ys = self.to_original(np.zeros_like(centres), centres)
        cols = np.floor(xs).astype(np.int64)
        rows = np.floor(ys).astype(np.int64)
        valid_c = (cols >= 0) & (cols < mask.shape[1])
        valid_r = (rows >= 0) & (rows < mask.shape[0])
        out = mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)]
        return out & valid_r[:, None] & valid_c[None, :]

    def box_to_crop(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """A box (x, y, w, h) in original pixels -> a boolean mask on the crop grid (pixel centres inside)."""
        bx, by, bw, bh = (float(v) for v in box)
        centres = np.arange(self.size) + 0.5
        xs, _ = self.to_original(centres, np.zeros_like(centres))
        _, ys = self.to_original(np.zeros_like(centres), centres)
        return ((ys >= by) & (ys < by + bh))[:, None] & ((xs >= bx) & (xs < bx + bw))[None, :]

    def box_to_original(self, box: tuple[float, float, float, float] | np.ndarray) -> tuple[float, ...]:
        """An inclusive pixel-centre box (x1, y1, x2, y2) on the crop grid (MGE-CNN's boxes) -> the same pixels'
        outer edges in original-image coordinates (x1, y1, x2, y2)."""
        x1, y1, x2, y2 = (float(v) for v in box)
        ox1, oy1 = self.to_original(x1, y1)
        ox2, oy2 = self.to_original(x2 + 1.0, y2 + 1.0)
        return float(ox1), float(oy1), float(ox2), float(oy2)


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled down (never up) so that the longer side is at most `max_side`, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """A small map (h x w) covering the crop -> size x size, bilinear with half-pixel centres (like
    `F.interpolate(..., align_corners=False)`)."""
    grid = np.asarray(grid, dtype=np.float64)
    h, w = grid.shape
    if (h, w) == (size, size):
        return grid
    centres = np.arange(size) + 0.5
    return _bilinear(grid, (centres * h / size - 0.5)[:, None], (centres * w / size - 0.5)[None, :])


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample `grid` at fractional (row, col) index arrays (broadcast), clamping at the border."""
    h, w = grid.shape
    rows = np.clip(rows, 0.0, h - 1.0)
    cols = np.clip(cols, 0.0, w - 1.0)
    r0 = np.floor(rows).astype(np.int64)
    c0 = np.floor(cols).astype(np.int64)
    r1 = np.minimum(r0 + 1, h - 1)
    c1 = np.minimum(c0 + 1, w - 1)
    fr = rows - r0
    fc = cols - c0
    top = grid[r0, c0] * (1 - fc) + grid[r0, c1] * fc
    bottom = grid[r1, c0] * (1 - fc) + grid[r1, c1] * fc
    return top * (1 - fr) + bottom * fr
