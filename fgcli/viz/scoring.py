"""Put a number on a map: pointing game and energy inside a part mask / object box, against a random map; and
on a box a method draws (MGE-CNN's zoom boxes): how much of the object it frames, and how much of it is object.

Maps and masks are on the same grid (the model's input crop). NaN map values (outside an MGE-CNN expert's
region) count as 0. For a map with no information (i.i.d. random or constant), both scores have the
expectation `area` = the part's share of the input, which is the random-map baseline reported beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def pointing_hit(attn: np.ndarray, mask: np.ndarray) -> float:
    """1.0 if the map's maximum lies inside the mask, else 0.0; ties share the hit (the expected outcome of
    a random tie-break), so a constant map scores the mask's area fraction, not a free 1.0."""
    values = np.nan_to_num(np.asarray(attn, dtype=np.float64), nan=-np.inf)
    peak = values.max()
    if not np.isfinite(peak):
        return float(np.asarray(mask, dtype=bool).mean())
    top = values >= peak
    return float((top & np.asarray(mask, dtype=bool)).sum() / top.sum())


def energy_fraction(attn: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's (non-negative) mass inside the mask; an all-zero map scores the area fraction."""
    values = np.clip(np.nan_to_num(np.asarray(attn, dtype=np.float64), nan=0.0), 0.0, None)
    mask = np.asarray(mask, dtype=bool)
    total = values.sum()
    if total <= 0:
        return float(mask.mean())
    return float(values[mask].sum() / total)


def box_mask(box: np.ndarray | tuple[float, ...], size: int) -> np.ndarray:
    """An inclusive pixel-centre box (x1, y1, x2, y2) on the size x size input grid (MGE-CNN's boxes: pixels
    x1..x2, i.e. edges [x1, x2 + 1)) -> the pixels whose centres it covers."""
    x1, y1, x2, y2 = (float(v) for v in box)
    centres = np.arange(size) + 0.5
    return (((centres >= y1) & (centres < y2 + 1.0))[:, None]
            & ((centres >= x1) & (centres < x2 + 1.0))[None, :])


def box_overlap(box: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """Two boolean masks on one grid -> (share of the target inside the box, share of the box on the target,
    intersection over union); an empty box covers nothing and is 0 % on target."""
    box, target = np.asarray(box, dtype=bool), np.asarray(target, dtype=bool)
    both = float((box & target).sum())
    union = float((box | target).sum())
    return (both / max(float(target.sum()), 1.0), both / float(box.sum()) if box.any() else 0.0,
            both / union if union else 0.0)


@dataclass
class BoxRow:
    """Running means of one box's overlap with the target over images."""

    name: str
    inside: list[float] = field(default_factory=list)
    on_target: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    area: list[float] = field(default_factory=list)

    def add(self, box: np.ndarray, mask: np.ndarray) -> None:
        covered = box_mask(box, mask.shape[0])
        inside, on_target, iou = box_overlap(covered, mask)
        self.inside.append(inside)
        self.on_target.append(on_target)
        self.iou.append(iou)
        self.area.append(float(covered.mean()))

    def summary(self) -> dict[str, float | int | str]:
        return {"box": self.name, "images": len(self.iou), "target_inside": float(np.mean(self.inside)),
                "box_on_target": float(np.mean(self.on_target)), "iou": float(np.mean(self.iou)),
                "box_area": float(np.mean(self.area))}


@dataclass
class ScoreRow:
    """Running means of one map's scores over images."""

    name: str
    pointing: list[float] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    area: list[float] = field(default_factory=list)

    def add(self, attn: np.ndarray, mask: np.ndarray) -> None:
        self.pointing.append(pointing_hit(attn, mask))
        self.energy.append(energy_fraction(attn, mask))
        self.area.append(float(np.asarray(mask, dtype=bool).mean()))

    def summary(self) -> dict[str, float | int | str]:
        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        return {"map": self.name, "images": len(self.pointing), "pointing": mean(self.pointing),
                "energy": mean(self.energy), "random": mean(self.area)}


class Scoreboard:
    """Scores per map name, in the order maps were first seen."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.rows: dict[str, ScoreRow] = {}
        self.box_rows: dict[str, BoxRow] = {}
        self.skipped = 0  # images whose part / object lies outside the input crop

    def add(self, maps: dict[str, np.ndarray], mask: np.ndarray,
            boxes: dict[str, np.ndarray] | None = None) -> None:
        """Score every map and box (x1, y1, x2, y2) of one image against its mask (crop grid); empty masks are
        skipped."""
        if not np.asarray(mask, dtype=bool).any():
            self.skipped += 1
            return
        for name, attn in maps.items():
            self.rows.setdefault(name, ScoreRow(name)).add(attn, mask)
        for name, box in (boxes or {}).items():
            self.box_rows.setdefault(name, BoxRow(name)).add(box, mask)

    def summaries(self) -> list[dict[str, float | int | str]]:
        return [{"method": self.method, **row.summary()} for row in self.rows.values()]

    def box_summaries(self) -> list[dict[str, float | int | str]]:
        return [{"method": self.method, **row.summary()} for row in self.box_rows.values()]
