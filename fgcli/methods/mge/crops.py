"""MGE-CNN's attention -> box -> zoom step (spec/mge.md §2.3), batched and ONNX-exportable.

Every function works on whole batches with tensor ops only (no per-sample loop, no `.item()`), so the
same code runs on CPU, GPU, under DDP and inside an exported ONNX graph. Boxes are `(x1, y1, x2, y2)`
in 0-based pixel centres of the tensor they were computed on, inclusive at both ends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cam_weights(fc_weight: Tensor, classes: Tensor, grid_area: int) -> Tensor:
    """Grad-CAM channel weights in closed form: `ReLU(W[k, :]) / (h*w)` per sample (B x C4).

    For a GAP -> Linear head, d z[k] / d F[ch, i, j] = W[k, ch] / (h*w) at every location, so the official
    Grad-CAM weights (spatial mean of the ReLU of the gradient) are exactly this. No autograd involved.
    """
    return torch.relu(fc_weight.detach()[classes].float()) / float(grid_area)


def class_activation_map(features: Tensor, weights: Tensor) -> Tensor:
    """`CAM[b, i, j] = sum_ch weights[b, ch] * features[b, ch, i, j]` (B x h x w, fp32, no ReLU on the sum).

    Elementwise multiply + sum rather than einsum/bmm, so that autocast keeps it in fp32.
    """
    return (features.detach().float() * weights[:, :, None, None]).sum(dim=1)


def upsample_cam(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling with `align_corners=True` from the feature grid to `size` (B x H x W)."""
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def normalize_cam(cam: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample min-max normalisation to [0, 1] and a B-bool `valid` flag (False where max == min).

    A constant map normalises to all zeros (instead of the official 0/0 = NaN).
    """
    flat = cam.flatten(1)
    low = flat.amin(dim=1)
    span = flat.amax(dim=1) - low
    valid = span > 0
    scale = torch.where(valid, span, torch.ones_like(span))
    normed = (cam - low[:, None, None]) / scale[:, None, None]
    return torch.where(valid[:, None, None], normed, torch.zeros_like(normed)), valid


def cam_box(cam: Tensor, threshold: float, exclusive_end: bool = False) -> Tensor:
    """The tight box of all pixels whose min-max normalised CAM is >= `threshold` (B x 4, float).

    `cam` is the upsampled, *unnormalised* map (B x H x W). Because (v - min) / (max - min) is monotone
    (also under IEEE rounding), the row/column maxima of the normalised map equal the normalised row/column
    maxima, so only B x (H + W) values are normalised and thresholded; the box is then a masked min/max
    reduction over the row and column index grids. Fallback to the whole image (0, 0, W-1, H-1) when the
    map is constant or the box is one pixel thin (x1 == x2 or y1 == y2). `exclusive_end` replicates the
    official slicing `X[y1:y2, x1:x2]` (the box ends at y2-1, x2-1).
    """
    _, height, width = cam.shape
    low = cam.flatten(1).amin(dim=1)
    span = cam.flatten(1).amax(dim=1) - low
    valid = span > 0
    scale = torch.where(valid, span, torch.ones_like(span))[:, None]
    rows = (cam.amax(dim=2) - low[:, None]) / scale >= threshold  # B x H: some pixel in the row passes
    cols = (cam.amax(dim=1) - low[:, None]) / scale >= threshold  # B x W
    y1, y2 = _first_last(rows)
    x1, x2 = _first_last(cols)
    if exclusive_end:
        x2, y2 = x2 - 1, y2 - 1
    keep = valid & (x2 > x1) & (y2 > y1)
    box = torch.stack([x1, y1, x2, y2], dim=1)
    full = torch.tensor([0.0, 0.0, width - 1.0, height - 1.0], dtype=box.dtype, device=box.device)
    return torch.where(keep[:, None], box, full.expand_as(box))


def _first_last(hits: Tensor) -> tuple[Tensor, Tensor]:
    """First and last index where `hits` (B x N bool) is True, as float; (N, -1) for an empty row."""
    n = hits.shape[1]
    index = torch.arange(n, device=hits.device, dtype=torch.float32).expand_as(hits)
    first = torch.where(hits, index, torch.full_like(index, float(n))).amin(dim=1)
    last = torch.where(hits, index, torch.full_like(index, -1.0)).amax(dim=1)
    return first, last


def box_rois(boxes: Tensor, out_size: tuple[int, int]) -> Tensor:
    """`roi_align` rois (B x 5) that sample the inclusive box on an aligned-corners grid of `out_size`.

    With `aligned=False` and `sampling_ratio=1`, roi_align samples bin centres `x1' + (j + 0.5) * bin`.
    Starting half a step before x1 with bins of `s = (x2 - x1) / (W - 1)` puts sample j at exactly
    `x1 + j * s`: slicing the box and `interpolate(..., align_corners=True)` (spec §2.3 step 7).
    """
    out_h, out_w = out_size
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    step_x = (x2 - x1) / max(out_w - 1, 1)
    step_y = (y2 - y1) / max(out_h - 1, 1)
    start_x = x1 - step_x / 2
    start_y = y1 - step_y / 2
    batch = torch.arange(boxes.shape[0], device=boxes.device, dtype=boxes.dtype)
    return torch.stack([batch, start_x, start_y, start_x + out_w * step_x, start_y + out_h * step_y], dim=1)


def crop_and_zoom(images: Tensor, boxes: Tensor, out_size: tuple[int, int] | None = None) -> Tensor:
    """Crop every image to its box and resize it to `out_size` (default: the input size) in one call.

    Bilinear, aligned corners, at least fp32 (half inputs are upcast; float64 stays float64), detached
    (no gradient reaches the box or the previous input).
    """
    from torchvision.ops import roi_align

    size = tuple(images.shape[-2:]) if out_size is None else out_size
    source = images.detach()
    if source.dtype != torch.float64:
        source = source.float()
    rois = box_rois(boxes.to(source.dtype), size)
    crops = roi_align(source, rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=False)
    return crops.detach()


def compose_box(outer: Tensor, inner: Tensor, size: tuple[int, int]) -> Tensor:
    """Map `inner` (a box in the zoomed crop of `outer`, resized to `size`) into `outer`'s coordinates.

    A point x' of the zoom lies at `x1 + x' * (x2 - x1) / (W - 1)` of the tensor the crop came from
    (spec §2.3 step 8); applied to both corners.
    """
    height, width = size
    ox1, oy1, ox2, oy2 = outer.unbind(dim=1)
    sx = (ox2 - ox1) / max(width - 1, 1)
    sy = (oy2 - oy1) / max(height - 1, 1)
    ix1, iy1, ix2, iy2 = inner.unbind(dim=1)
    return torch.stack([ox1 + ix1 * sx, oy1 + iy1 * sy, ox1 + ix2 * sx, oy1 + iy2 * sy], dim=1)


def warp_to_image(maps: Tensor, region: Tensor, size: tuple[int, int]) -> Tensor:
    """Paste maps (B x h x w, on the grid of a zoomed input) into the input-image grid of `size`.

    `region` (B x 4) is the zoomed input's extent in image coordinates (the composed box; the full image
    for expert 1). Pixels outside the region are NaN ("empty"), inside they are sampled bilinearly.
    """
    height, width = size
    x1, y1, x2, y2 = (v[:, None, None] for v in region.unbind(dim=1))
    ys = torch.arange(height, device=maps.device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, device=maps.device, dtype=torch.float32)[None, None, :]
    # image pixel -> fraction of the region -> the map's align_corners grid in [-1, 1]
    fx = (xs - x1) / (x2 - x1).clamp_min(1e-6)
    fy = (ys - y1) / (y2 - y1).clamp_min(1e-6)
    fx, fy = torch.broadcast_tensors(fx, fy)
    grid = torch.stack([fx * 2 - 1, fy * 2 - 1], dim=-1)  # align_corners=True: -1 / 1 = first / last pixel
    out = F.grid_sample(maps[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    tol = 1e-4
    inside = (fx >= -tol) & (fx <= 1 + tol) & (fy >= -tol) & (fy <= 1 + tol)
    return torch.where(inside, out, torch.full_like(out, float("nan")))
