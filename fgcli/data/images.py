"""Robust image loading (any mode -> RGB, EXIF orientation) and the per-file image check."""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEFAULT_MIN_SIZE = 16
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# A truncated file must be an error, never silently half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_name(name: str) -> bool:
    """True for a visible file with an image extension (skips macOS '._x.jpg' and other dot files)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB: EXIF orientation applied, alpha composited on white, 16-bit scaled."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(_exif_transpose(im))


def load_rgb_tensor(path: str | os.PathLike) -> Any:
    """The image as a 3 x H x W uint8 RGB tensor. JPEGs are decoded by torchvision (libjpeg-turbo, EXIF
    orientation applied) straight into a tensor; any other format, or a JPEG torchvision refuses (e.g. CMYK),
    goes through `load_rgb`, so the result never differs in kind from the PIL path. torchvision 0.29 deprecated
    its image decoders (for TorchCodec); once they are gone, every file takes the PIL path."""
    import torch

    with open(path, "rb") as f:
        data = f.read()
    if data[:3] == b"\xff\xd8\xff":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg

                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                   apply_exif_orientation=True)
        except (ImportError, RuntimeError):
            pass
    return torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1).contiguous()


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode (1, L, P, PA, LA, RGBA, CMYK, YCbCr, I;16, I, F, ...) to RGB."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im)), mode="L").convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit or float grey image to 0..255."""
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    hi = float(finite.max()) if finite.size else 0.0
    lo = float(finite.min()) if finite.size else 0.0
    if lo >= 0 and hi <= 255 and arr.dtype.kind != "f":
        scaled = arr
    elif lo >= 0 and hi <= 1.0:
        scaled = arr * 255.0
    elif lo >= 0 and hi <= 65535:
        scaled = arr / 257.0
    else:
        scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF data: keep the pixels as stored
        return im
    return out if out is not None else im


@dataclass
class ImageCheck:
    """The outcome of checking one file: `reason` is None when the image is usable."""

    reason: str | None
    width: int = 0
    height: int = 0


def check_image(path: str | os.PathLike, min_size: int = DEFAULT_MIN_SIZE,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Fully decode one file and convert it to RGB; report why it is unusable, never raise."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ImageCheck("file not found")
    except OSError as e:
        return ImageCheck(f"cannot read file: {e.strerror or e}")
    if not path.is_file():
        return ImageCheck("not a regular file")
    if size == 0:
        return ImageCheck("empty file (0 bytes)")
    previous = Image.MAX_IMAGE_PIXELS
    # Opening reads only the header; the size is checked below, before anything is decoded. Pillow's own
    # check is off meanwhile so that the reason can name the size (and honour a raised --max-pixels).
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    return ImageCheck(_bomb(width, height, max_pixels), width, height)
                im.load()
                rgb = to_rgb(_exif_transpose(im))
                rgb.getpixel((0, 0))
                width, height = rgb.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return ImageCheck(f"decompression bomb: more than {max_pixels} pixels (raise the limit with --max-pixels "
                          "if the image is genuine)")
    except UnidentifiedImageError:
        return ImageCheck("not an image (unknown or unsupported format)")
    except (OSError, SyntaxError, EOFError, struct.error) as e:
        text = str(e) or type(e).__name__
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        return ImageCheck(f"{reason} image: {text}")
    except (ValueError, KeyError, TypeError) as e:
        return ImageCheck(f"cannot convert to RGB: {e}")
    except MemoryError:
        return ImageCheck("out of memory while decoding (image too large)")
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if min(width, height) < min_size:
        return ImageCheck(f"too small: {width}x{height} pixels (minimum side {min_size}; change with --min-size)",
                          width, height)
    return ImageCheck(None, width, height)


def _bomb(width: int, height: int, max_pixels: int) -> str:
    return (f"decompression bomb: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(raise it with --max-pixels if the image is genuine)")
