"""Image checks on generated bad files of every kind, robust RGB loading, and bad images during prepare."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgcli.data.checks import check_images
from fgcli.data.images import check_image, load_rgb
from fgcli.data.prepare import PrepareOptions, prepare_dataset
from fgcli.errors import UserError


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height 1-bit pixels (the bytes of a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _jpeg(size=(40, 30), mode="RGB", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_bad_files(folder: Path) -> dict[str, str | None]:
    """name -> expected reason prefix (None = must pass) for every kind of difficult file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(_random_jpeg()[:700])
    (folder / "text.jpg").write_bytes(b"this is not an image, just text\n" * 10)
    (folder / "tiny.png").write_bytes(_save(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "cmyk.jpg").write_bytes(_jpeg(mode="CMYK", color=(0, 200, 200, 0)))
    gray16 = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    (folder / "gray16.png").write_bytes(_save(gray16, "PNG"))
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    pal.info["transparency"] = 0
    (folder / "palette_alpha.png").write_bytes(_save(pal, "PNG", transparency=0))
    (folder / "gray_alpha.png").write_bytes(_save(Image.new("LA", (32, 32), (100, 128)), "PNG"))
    (folder / "rgba.png").write_bytes(_save(Image.new("RGBA", (32, 32), (0, 0, 255, 0)), "PNG"))
    (folder / "grayscale.jpg").write_bytes(_jpeg(mode="L", color=90))
    (folder / "ok.jpg").write_bytes(_jpeg())
    return {"zero.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not an image",
            "tiny.png": "too small", "bomb.png": "decompression bomb", "cmyk.jpg": None, "gray16.png": None,
            "palette_alpha.png": None, "gray_alpha.png": None, "rgba.png": None, "grayscale.jpg": None,
            "ok.jpg": None}


def _random_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    return _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


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
    ds = prepare_dataset("imagefolder", root, out, PrepareOptions(workers=2, test_fraction=0.0, val_fraction=0.0),
                         summary=False)
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
        prepare_dataset("imagefolder", root, out, PrepareOptions(workers=1, strict=True), summary=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing lost


def test_class_left_without_images_after_skipping_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    (root / "a" / "0.jpg").write_bytes(_jpeg())
    (root / "b" / "0.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="1 class\\(es\\) have no training images after skipping bad images: 'b'"):
        prepare_dataset("imagefolder", root, tmp_path / "out", PrepareOptions(workers=1), summary=False)
