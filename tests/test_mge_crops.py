"""MGE-CNN's attention -> box -> crop step against hand-computed values and slow references (spec §2.3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from references import reference_crop

from fgcli.methods.mge import crops


def autograd_gradcam(features: torch.Tensor, fc: torch.nn.Linear, classes: torch.Tensor) -> torch.Tensor:
    """The official Grad-CAM variant by autograd: weights = spatial mean of ReLU(d z[k] / d F)."""
    feats = features.detach().clone().requires_grad_(True)
    logits = fc(feats.mean(dim=(2, 3)))
    logits.gather(1, classes[:, None]).sum().backward()
    weights = torch.relu(feats.grad).mean(dim=(2, 3))
    return (weights[:, :, None, None] * feats.detach()).sum(dim=1)


def test_closed_form_cam_equals_autograd_gradcam() -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 16, 5, 7)  # negative values too: the closed form must not depend on F >= 0
    fc = torch.nn.Linear(16, 6)
    classes = torch.tensor([0, 5, 2])
    expected = autograd_gradcam(features, fc, classes)
    got = crops.class_activation_map(features, crops.cam_weights(fc.weight, classes, 5 * 7))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # and by hand for one sample: sum_ch relu(W[k, ch]) / (h*w) * F[ch]
    by_hand = sum(max(float(fc.weight.detach()[5, ch]), 0.0) / 35 * features[1, ch] for ch in range(16))
    torch.testing.assert_close(got[1], by_hand, rtol=1e-5, atol=1e-6)


def test_box_of_a_hand_made_map_is_the_tight_box_of_all_pixels_at_or_above_threshold() -> None:
    # 6 x 8 map, min 0, max 8; tau = 0.25 <=> value >= 2 (exact in binary, so the boundary is tested).
    cam = torch.zeros(1, 6, 8)
    cam[0, 1, 2] = 8.0  # blob A
    cam[0, 1, 3] = 2.0  # exactly at the threshold: included (inclusive mask)
    cam[0, 4, 6] = 3.0  # blob B, disconnected: the box covers both (not the largest component)
    cam[0, 5, 0] = 1.9  # below the threshold: ignored
    box = crops.cam_box(cam, threshold=0.25)
    assert box.tolist() == [[2.0, 1.0, 6.0, 4.0]]  # (x1, y1, x2, y2), inclusive pixel centres
    # the official mask expression sign(sign(C - tau) + 1) is the same set
    normed, valid = crops.normalize_cam(cam)
    assert valid.tolist() == [True]
    official = torch.sign(torch.sign(normed - 0.25) + 1).bool()
    assert torch.equal(official, normed >= 0.25)
    # official exclusive slicing: the last row and column are dropped
    assert crops.cam_box(cam, 0.25, exclusive_end=True).tolist() == [[2.0, 1.0, 5.0, 3.0]]


def test_box_is_batched_per_sample() -> None:
    cam = torch.zeros(2, 10, 10)
    cam[0, 2:4, 5:9] = 1.0
    cam[1, 7, 1] = 1.0
    cam[1, 9, 3] = 0.5
    assert crops.cam_box(cam, 0.5).tolist() == [[5.0, 2.0, 8.0, 3.0], [1.0, 7.0, 3.0, 9.0]]


def test_constant_and_thin_maps_fall_back_to_the_whole_image() -> None:
    cam = torch.zeros(3, 6, 9)
    cam[0] = 4.2  # constant: max == min (the official code divides by zero here)
    cam[1, 3, 2:7] = 1.0  # one row thick: y1 == y2
    cam[2, 1:5, 4] = 1.0  # one column thick: x1 == x2
    full = [0.0, 0.0, 8.0, 5.0]
    assert crops.cam_box(cam, 0.2).tolist() == [full, full, full]
    normed, valid = crops.normalize_cam(cam)
    assert valid.tolist() == [False, True, True]
    assert torch.isfinite(normed).all() and normed[0].abs().sum() == 0
    # exclusive end: a two-pixel box shrinks to one pixel, also degenerate
    cam2 = torch.zeros(1, 6, 9)
    cam2[0, 2:4, 4:6] = 1.0
    assert crops.cam_box(cam2, 0.5, exclusive_end=True).tolist() == [full]


def test_upsample_cam_is_bilinear_with_aligned_corners() -> None:
    cam = torch.tensor([[[0.0, 3.0], [6.0, 9.0]]])
    up = crops.upsample_cam(cam, (3, 4))
    # aligned corners: the corners are kept, the middle row is the average of the two rows
    assert up[0, 0].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert up[0, 1].tolist() == pytest.approx([3.0, 4.0, 5.0, 6.0])
    assert up[0, 2].tolist() == pytest.approx([6.0, 7.0, 8.0, 9.0])


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_roi_align_crop_equals_slice_and_interpolate(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(1)
    images = torch.rand(5, 3, 40, 52, dtype=dtype)
    boxes = torch.tensor([[0, 0, 51, 39],  # whole image
                          [3, 7, 20, 30],
                          [50, 0, 51, 1],  # 2 x 2 corner
                          [10, 38, 45, 39],  # 2 rows at the bottom edge
                          [0, 5, 1, 37]], dtype=torch.float32)
    got = crops.crop_and_zoom(images, boxes)
    assert got.dtype == dtype and got.shape == images.shape
    for b in range(5):
        ref = reference_crop(images[b], boxes[b], (40, 52))
        assert (got[b] - ref).abs().max().item() < tol, b
    # by hand: the zoom's corners are the box corners (row y1 = 7, col x1 = 3; row 30, col 20), and
    # output pixel (i, j) samples y = 7 + i * 23 / 39, x = 3 + j * 17 / 51 bilinearly
    torch.testing.assert_close(got[1, :, 0, 0], images[1, :, 7, 3])
    torch.testing.assert_close(got[1, :, -1, -1], images[1, :, 30, 20])
    y, x = 7 + 13 * 23 / 39, 3 + 9 * 17 / 51  # output pixel (13, 9)
    y0, x0, wy, wx = int(y), int(x), y - int(y), x - int(x)
    img = images[1]
    by_hand = ((1 - wy) * (1 - wx) * img[:, y0, x0] + (1 - wy) * wx * img[:, y0, x0 + 1]
               + wy * (1 - wx) * img[:, y0 + 1, x0] + wy * wx * img[:, y0 + 1, x0 + 1])
    assert (got[1, :, 13, 9] - by_hand).abs().max().item() < tol


def test_roi_align_crop_to_another_output_size() -> None:
    images = torch.rand(2, 3, 30, 30, dtype=torch.float64)
    boxes = torch.tensor([[4, 5, 17, 25], [0, 0, 29, 29]], dtype=torch.float32)
    got = crops.crop_and_zoom(images, boxes, (16, 24))
    for b in range(2):
        torch.testing.assert_close(got[b], reference_crop(images[b], boxes[b], (16, 24)), rtol=0, atol=1e-10)


def test_crop_is_detached() -> None:
    images = torch.rand(1, 3, 8, 8, requires_grad=True)
    out = crops.crop_and_zoom(images, torch.tensor([[1.0, 1.0, 6.0, 5.0]]))
    assert not out.requires_grad


def test_compose_box_maps_a_zoomed_box_back_to_the_image() -> None:
    outer = torch.tensor([[10.0, 20.0, 50.0, 60.0]])  # box 1 in the 101 x 101 image
    inner = torch.tensor([[25.0, 0.0, 50.0, 100.0]])  # box 2 in the zoom (also 101 x 101)
    # x = x1 + x' (x2 - x1) / (W - 1) = 10 + x' * 0.4 ; y = 20 + y' * 0.4
    assert crops.compose_box(outer, inner, (101, 101)).tolist() == [[20.0, 20.0, 30.0, 60.0]]


def test_warp_to_image_places_a_known_peak_and_leaves_the_rest_empty() -> None:
    maps = torch.zeros(1, 101, 101)
    maps[0, 50, 25] = 1.0  # peak at x' = 25, y' = 50 of the zoom
    region = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    warped = crops.warp_to_image(maps, region, (101, 101))
    inside = torch.isfinite(warped[0])
    rows, cols = inside.any(dim=1).nonzero()[:, 0], inside.any(dim=0).nonzero()[:, 0]
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (20, 60, 10, 50)
    peak = torch.nan_to_num(warped[0], nan=-1.0).argmax().item()
    assert divmod(peak, 101) == (20 + 50 * 0.4, 10 + 25 * 0.4)  # (y, x) = (40, 20)
    # the full region is the identity
    same = crops.warp_to_image(maps, torch.tensor([[0.0, 0.0, 100.0, 100.0]]), (101, 101))
    torch.testing.assert_close(same, maps, rtol=0, atol=1e-5)


def test_rois_follow_the_spec_formula() -> None:
    rois = crops.box_rois(torch.tensor([[3.0, 7.0, 20.0, 30.0]]), (40, 52))
    sx, sy = 17 / 51, 23 / 39
    expected = [0.0, 3 - sx / 2, 7 - sy / 2, 3 - sx / 2 + 52 * sx, 7 - sy / 2 + 40 * sy]
    assert rois[0].tolist() == pytest.approx(expected)


def test_crop_matches_interpolate_loop_on_the_model_size() -> None:
    # the per-sample loop the batched crop replaces (what benchmarks/mge_crops.py times)
    torch.manual_seed(2)
    images = torch.randn(4, 3, 64, 64)
    cam = F.interpolate(torch.rand(4, 1, 4, 4), size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    boxes = crops.cam_box(cam, 0.5)
    got = crops.crop_and_zoom(images, boxes)
    ref = torch.stack([reference_crop(images[b], boxes[b], (64, 64)) for b in range(4)])
    assert (got - ref).abs().max().item() < 1e-4
