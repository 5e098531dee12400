"""Generated image files of every difficult kind (shared by the image-check and fault-injection tests)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


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
