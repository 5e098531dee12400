"""Image checks on generated bad files of every kind, robust RGB loading, and bad images during prepare."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from imagekit import _jpeg, make_bad_files
from PIL import Image

from fgcli.data.checks import check_images
from fgcli.data.images import check_image, load_rgb
from fgcli.data.prepare import PrepareOptions, prepare_dataset
from fgcli.errors import UserError


def test_check_image_reports_every_kind_of_bad_file(tmp_path: Path) -> None:
    expected = make_bad_files(tmp_path)
    for name, reason in expected.items():
        result = check_image(tmp_path / name)
        if reason is None:
            assert result.reason is None, f"{name}: {result.reason}"
            assert result.width >= 16 and result.height >= 16
        else:
            assert result.reason is not None and result.reason.startswith(reason), f"{name}: {result.reason}"
    assert check_image(tmp_path / "missing.jpg").reason == "file not found"


def test_max_pixels_and_min_size_are_configurable(tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(_jpeg(size=(100, 80)))
    assert "decompression bomb: 100x80 = 8000 pixels" in check_image(tmp_path / "big.jpg", max_pixels=5000).reason
    assert check_image(tmp_path / "big.jpg", min_size=81).reason.startswith("too small: 100x80")
    assert check_image(tmp_path / "big.jpg").reason is None
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # restored after the check


def test_parallel_checks_match_serial_and_keep_order(tmp_path: Path) -> None:
    expected = make_bad_files(tmp_path)
    paths = [tmp_path / name for name in expected] * 6  # above the pool threshold
    serial = check_images(paths, workers=1)
    parallel = check_images(paths, workers=2)
    assert [r.reason for r in serial] == [r.reason for r in parallel]
    assert [(r.width, r.height) for r in serial] == [(r.width, r.height) for r in parallel]


def test_load_rgb_converts_every_mode(tmp_path: Path) -> None:
    make_bad_files(tmp_path)
    for name in ("cmyk.jpg", "gray16.png", "palette_alpha.png", "gray_alpha.png", "rgba.png", "grayscale.jpg"):
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB", name
    gray16 = np.asarray(load_rgb(tmp_path / "gray16.png"))
    assert gray16[0, 0].tolist() == [0, 0, 0] and gray16[-1, -1, 0] == round(1023 * 60 / 257)  # scaled, not clipped
    pal = np.asarray(load_rgb(tmp_path / "palette_alpha.png"))
    assert pal[0, 0].tolist() == [0, 255, 0] and pal[0, -1].tolist() == [255, 255, 255]  # transparent -> white
    assert np.asarray(load_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [255, 255, 255]
    over_white = 100 * 128 / 255 + 255 * (1 - 128 / 255)  # grey 100 at alpha 128 composited on white
    assert np.abs(np.asarray(load_rgb(tmp_path / "gray_alpha.png"))[0, 0] - over_white).max() <= 1


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(tmp_path / "rotated.jpg")
    assert out.size == (20, 40)
    assert np.asarray(out)[2, 10].mean() > 200 and np.asarray(out)[-2, 10].mean() < 50  # band now on top


def test_prepare_skips_and_lists_bad_images_or_fails_with_strict(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    expected = make_bad_files(root / "cat")
    for k in range(3):
        (root / "dog" / f"{k}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (root / "dog" / f"{k}.jpg").write_bytes(_jpeg(color=(k * 40, 50, 50)))
    out = tmp_path / "out"
    ds = prepare_dataset("imagefolder", root, out, PrepareOptions(workers=2, test_fraction=0.0, val_fraction=0.0))
    with open(out / "bad_images.csv", newline="", encoding="utf-8") as f:
        bad = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    wanted_bad = {f"cat/{n}" for n, r in expected.items() if r is not None}
    assert set(bad) == wanted_bad
    assert all(bad[f"cat/{n}"].startswith(r) for n, r in expected.items() if r is not None)
    kept = {s.path for s in ds.split("train")}
    assert kept == {f"cat/{n}" for n, r in expected.items() if r is None} | {f"dog/{k}.jpg" for k in range(3)}
    assert ds.meta["bad_images"] == 5
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"5 bad image\(s\) \(first: cat/bomb.png: decompression bomb"):
        prepare_dataset("imagefolder", root, out, PrepareOptions(workers=1, strict=True))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing lost


def test_class_left_without_images_after_skipping_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    (root / "a" / "0.jpg").write_bytes(_jpeg())
    (root / "b" / "0.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"1 class\(es\) have no training images after skipping bad images "
                                        r"\(listed in .*bad_images.csv\): 'b'"):
        prepare_dataset("imagefolder", root, tmp_path / "out", PrepareOptions(workers=1))
    assert "b/0.jpg,empty file" in (tmp_path / "out" / "bad_images.csv").read_text(encoding="utf-8")


def test_torchvision_decoder_gives_the_pil_pixels_for_every_mode(tmp_path: Path) -> None:
    from fgcli.data.images import load_rgb_tensor

    make_bad_files(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(_jpeg(size=(64, 48)))
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    for name in ("photo.jpg", "rotated.jpg", "cmyk.jpg", "grayscale.jpg", "gray16.png", "palette_alpha.png",
                 "rgba.png", "gray_alpha.png"):
        tensor = load_rgb_tensor(tmp_path / name)
        pil = np.asarray(load_rgb(tmp_path / name)).transpose(2, 0, 1)
        assert tensor.dtype.is_floating_point is False and tuple(tensor.shape) == pil.shape, name
        # both decode JPEGs with libjpeg-turbo: at most a rounding step apart
        assert np.abs(tensor.numpy().astype(int) - pil.astype(int)).max() <= 1, name


def test_dataset_with_the_torchvision_decoder_matches_pil(tmp_path: Path) -> None:
    import torch

    from fgcli.data.dataset import ManifestDataset
    from fgcli.data.manifest import Sample
    from fgcli.data.transforms import eval_transform
    from fgcli.modelinfo import Preprocess

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(size=(90 + 7 * i, 70)))
    samples = [Sample(f"{i}.jpg", i % 2) for i in range(3)]
    pre = Preprocess(img_size=48, resize=56, resize_mode="shorter", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    pil = ManifestDataset(samples, tmp_path, eval_transform(pre), crop_bottom=5)
    tv = ManifestDataset(samples, tmp_path, eval_transform(pre), crop_bottom=5, decoder="torchvision")
    assert tv.load(0).shape[1] == pil.load(0).height == 65  # the bottom rows are cropped alike
    for i in range(3):
        a, b = pil[i][0], tv[i][0]
        assert a.shape == b.shape and torch.allclose(a, b, atol=0.05) and (a - b).abs().mean() < 2e-3
    with pytest.raises(UserError, match="data.decoder"):
        ManifestDataset(samples, tmp_path, decoder="opencv")
