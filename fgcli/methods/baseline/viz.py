"""The baseline in attention-viz: the class activation map of its prediction over the image."""

from __future__ import annotations

import numpy as np
import torch

from fgcli.modelinfo import Preprocess
from fgcli.viz.geometry import upsample
from fgcli.viz.maps import ImageMaps, maxnorm, to_numpy
from fgcli.viz.panels import heat_panel, input_panel
from fgcli.viz.render import Canvas, ImageInfo, Panel, _short, topk_panel


def image_maps(out: dict[str, torch.Tensor], i: int, pre: Preprocess, method: str, probs: np.ndarray,
               rgb: np.ndarray) -> ImageMaps:
    """The CAM of the predicted class, upsampled to the input and max-normalised."""
    cam = upsample(to_numpy(out["cam"][i]), pre.img_size)  # h x w feature grid -> input size, half-pixel centres
    return ImageMaps(method, int(out["pred"][i]), probs, rgb, {"cam": maxnorm(cam)})


def panels(canvas: Canvas, info: ImageInfo, maps: ImageMaps, classes: list[str]) -> list[list[Panel | None]]:
    """Input, CAM, top classes."""
    cam = heat_panel(canvas, "cam", f"CAM of '{_short(classes[maps.pred])}'", maps.maps["cam"])
    return [[input_panel(canvas), cam, topk_panel(maps, classes, info.true_label)]]
