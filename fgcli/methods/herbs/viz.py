"""HERBS in attention-viz: per stage, the background-suppression score map of the stage's class and the tokens
the selector kept, with their product and agreement; captions flag stages whose class differs from the fused one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fgcli.modelinfo import Preprocess
from fgcli.viz.maps import ImageMaps, maxnorm, minmax, to_numpy
from fgcli.viz.panels import heat_panel, input_panel
from fgcli.viz.render import Canvas, ImageInfo, Panel, _short, topk_panel

#: the one map eval's confusions.html shows per image: the product of the stage score maps
SUMMARY_MAP = "score_prod"


def herbs_stages(out: dict[str, torch.Tensor]) -> list[int]:
    """The stage numbers present in a HERBS attention output (1..4)."""
    return sorted(int(k[5:]) for k in out if k.startswith("score") and k[5:].isdigit())


def image_maps(out: dict[str, torch.Tensor], i: int, pre: Preprocess, method: str, probs: np.ndarray,
               rgb: np.ndarray) -> ImageMaps:
    """Score and selection maps per stage, their combinations, and per-stage tau / class / disagreement."""
    maps: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {"stages": herbs_stages(out)}
    for s in extra["stages"]:
        score = to_numpy(out[f"score{s}"][i])
        maps[f"score{s}"] = minmax(score)
        extra[f"peak{s}"] = float(score.max())
        extra[f"tau{s}"] = float(out[f"tau{s}"][i])
        extra[f"cls{s}"] = int(out[f"cls{s}"][i])
        extra[f"disagree{s}"] = bool(out[f"disagree{s}"][i])
    maps["score_prod"] = maxnorm(to_numpy(out["score_prod"][i]))
    for s in extra["stages"]:
        maps[f"select{s}"] = to_numpy(out[f"select{s}"][i])
    maps["select_mean"] = to_numpy(out["select_mean"][i])
    return ImageMaps(method, int(out["pred"][i]), probs, rgb, maps, extra)


def notes(maps: ImageMaps) -> list[str]:
    """Caption notes: the stages whose class ĉ_i differs from the fused prediction."""
    stages = [str(s) for s in maps.extra.get("stages", []) if maps.extra.get(f"disagree{s}")]
    return [f"stages whose class differs from the fused one: {', '.join(stages)}"] if stages else []


def panels(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
    """Top row: input, each stage's score map, their product; bottom: top classes, each stage's kept tokens,
    the share of stages keeping each pixel."""
    ex = maps.extra
    top: list[Panel | None] = [input_panel(canvas)]
    bottom: list[Panel | None] = [topk_panel(maps, classes, info.true_label)]
    for s in ex["stages"]:
        flag = " ≠ fused" if ex[f"disagree{s}"] else ""
        top.append(heat_panel(canvas, f"score{s}", f"stage {s} score σ (max {ex[f'peak{s}']:.2f})\n"
                         f"class ĉ: {_short(classes[ex[f'cls{s}']], 20)}{flag}", maps.maps[f"score{s}"]))
        keep = maps.maps[f"select{s}"]

        def draw(ax: Any, keep: np.ndarray = keep) -> bool:
            return canvas.keep(ax, keep)

        bottom.append(Panel(f"select{s}", f"stage {s} selected tokens ({100 * float(np.mean(keep)):.0f}%)\n"
                            f"τ = {ex[f'tau{s}']:.3f}", draw))
    top.append(heat_panel(canvas, "score_prod", "combined: product of\nthe stage scores", maps.maps["score_prod"]))
    bottom.append(heat_panel(canvas, "select_mean", "combined: share of stages\nthat keep each pixel",
                        maps.maps["select_mean"]))
    return [top, bottom]
