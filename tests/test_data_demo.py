"""The synthetic demo data set: determinism, part masks and boxes that match the drawn part, hardness."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgcli.data.demo import PALETTE, DemoParams, class_names, generate_demo, render, render_with_info
from fgcli.data.prepare import PrepareOptions, prepare_dataset
from fgcli.errors import UserError


def test_generation_is_deterministic(tmp_path: Path) -> None:
    params = DemoParams(seed=7, size=40, classes=3, per_class=3)
    a = generate_demo(tmp_path / "a", params)
    b = generate_demo(tmp_path / "b", params)
    assert a.splits == b.splits
    files = [s.path for v in a.splits.values() for s in v] + [s.mask for v in a.splits.values() for s in v]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert len(match) == len(files) and not mismatch and not errors
    other = render(DemoParams(seed=8, size=40, classes=3, per_class=3), "train", 0, 0)[0]
    assert not np.array_equal(render(params, "train", 0, 0)[0], other)


def test_classes_are_distinct_part_types() -> None:
    names = class_names(20)
    assert len(set(names)) == 20 and names[:3] == ["disk-dot", "square-stripes", "triangle-half"]
    with pytest.raises(UserError, match="demo classes must be 2..20"):
        DemoParams(classes=21).validate()


@pytest.mark.parametrize("index", range(12))
def test_mask_and_box_cover_the_drawn_part(index: int) -> None:
    params = DemoParams(seed=1, size=96, classes=10)
    image, mask, info = render_with_info(params, "test", index, index % 10)
    _, mask2, box = render(params, "test", index, index % 10)
    assert np.array_equal(mask, mask2)
    ys, xs = np.nonzero(mask)
    assert box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    side = info["side"]
    assert 0.18 * 96 <= side <= 0.27 * 96
    assert 0.25 * side**2 <= len(xs) <= 1.05 * side**2  # shape area: from a triangle/star up to a square
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    assert abs(cx - info["centre"][0]) < 0.2 * side and abs(cy - info["centre"][1]) < 0.2 * side
    # inside the mask (away from its anti-aliased edge) the pixels are the part's two colours (+ noise)
    inner = mask.copy()
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        inner &= np.roll(mask, shift, axis=(0, 1))

    def part_coloured(region: np.ndarray) -> float:
        pixels = image[region > 0].astype(float)
        distance = np.min([np.linalg.norm(pixels - np.array(c), axis=1) for c in info["colours"]], axis=0)
        return float(np.mean(distance < 40))

    assert part_coloured(inner) > 0.75  # internal pattern edges are anti-aliased, hence not ~1.0
    shift = int(side) + 2
    moved = np.roll(inner, (shift if cy < 48 else -shift, shift if cx < 48 else -shift), axis=(0, 1))
    assert part_coloured(moved) < 0.5  # the same check fails for a mask one part-width off
    assert all(c in PALETTE for c in info["colours"])


def test_prepared_demo_has_masks_and_boxes_on_disk(tiny_demo) -> None:
    sample = tiny_demo.split("train")[0]
    mask = np.asarray(Image.open(tiny_demo.source_root / sample.mask))
    ys, xs = np.nonzero(mask)
    assert sample.box == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert set(np.unique(mask)) == {0, 255}
    assert tiny_demo.meta["has_masks"] and tiny_demo.format == "demo"
    assert [len(tiny_demo.split(s)) for s in ("train", "val", "test")] == [24, 8, 8]


def test_moved_demo_folder_still_loads(tmp_path: Path) -> None:
    from fgcli.data.manifest import load_prepared

    prepare_dataset("demo", None, tmp_path / "a", PrepareOptions(workers=1),
                    DemoParams(size=32, classes=2, per_class=2))
    (tmp_path / "a").rename(tmp_path / "b")
    ds = load_prepared(tmp_path / "b")
    assert ds.source_root == tmp_path / "b" and (ds.source_root / ds.split("train")[0].path).is_file()


def linear_probe_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                          classes: int) -> float:
    """Best test accuracy of ridge-regression classifiers on standardised raw pixels over a range of penalties.

    Taking the best penalty on the test set flatters the probe, which makes "it stays near chance" a
    conservative statement.
    """
    (xa, ya), (xb, yb) = train, test
    mu, sd = xa.mean(0), xa.std(0) + 1e-3
    xa, xb = (xa - mu) / sd, (xb - mu) / sd
    targets = np.eye(classes)[ya] - 1.0 / classes
    gram = xa @ xa.T
    scale = np.trace(gram) / len(xa)
    best = 0.0
    for lam in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        alpha = np.linalg.solve(gram + lam * scale * np.eye(len(xa)), targets)
        predictions = (xb @ xa.T @ alpha).argmax(1)
        best = max(best, float(np.mean(predictions == yb)))
    return best


def test_linear_model_on_raw_pixels_stays_near_chance() -> None:
    """Class information lives only in the part's shape and pattern, not in global colour statistics."""
    params = DemoParams(seed=0, size=48, classes=10, per_class=30)

    def pixels(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        images = [render(params, split, i, i % 10)[0] for i in range(n)]
        return np.stack(images).reshape(n, -1).astype(np.float32) / 255, np.arange(n) % 10

    accuracy = linear_probe_accuracy(pixels("train", 300), pixels("test", 150), 10)
    assert accuracy < 0.2, f"linear probe accuracy {accuracy:.3f} (chance 0.1): class leaks into global pixels"


def test_linear_probe_detects_a_global_leak() -> None:
    """Control for the test above: the same probe finds a class signal spread over the whole image."""
    rng = np.random.default_rng(0)
    templates = rng.normal(0, 1, (10, 48 * 48 * 3)).astype(np.float32)

    def leaky(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        return rng.uniform(0, 1, (n, 48 * 48 * 3)).astype(np.float32) + 0.05 * templates[labels], labels

    assert linear_probe_accuracy(leaky(300), leaky(150), 10) > 0.9
