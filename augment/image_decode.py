"""Image bytes -> RGB uint8 pixels, naming the image in every failure."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class DecodedImage:
    pixels: np.ndarray  # H x W x 3 uint8, RGB
    mode: str           # the source's PIL mode (RGB, L, RGBA, I;16, ...)
    size: tuple[int, int]  # source (width, height), before any upscaling
    upscaled: bool      # resized up because smaller than the crop


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message names the image."""


# PIL's own decompression-bomb error threshold (2 x Image.MAX_IMAGE_PIXELS). duchkit checks the
# pixel count itself, against this or the dataset's `max_image_pixels`, so that the limit is a
# setting and an image over it is a named problem instead of PIL's exception.
DEFAULT_MAX_PIXELS = 178_956_970


def open_image(source, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """PIL image of a path or file object, header only, its pixel count checked first."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # replaced by the check below, with our own limit
    try:
        im = Image.open(source)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") \
            from exc
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageDecodeError(f"{name}: {w} x {h} = {w * h:,} pixels, over the limit of "
                               f"{max_pixels:,} (raise [dataset] max_image_pixels to accept it)")
    return im


def decode_rgb(data: bytes, name: str, min_side: int = 0,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes to RGB uint8, fully (truncated files fail here, not later).

    Grayscale and palette images are converted, alpha is dropped, 16/32-bit integer images are
    scaled to 8 bit by their type range; images with a side below `min_side` are resized up
    (bicubic, aspect kept) so that a crop of `min_side` fits, and flagged."""
    from PIL import UnidentifiedImageError

    im = open_image(io.BytesIO(data), name, max_pixels)
    try:
        im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") \
            from exc
    mode, size = im.mode, im.size
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        pixels = np.repeat(gray[..., None], 3, axis=2)
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        gray = np.zeros(arr.shape, np.uint8) if hi <= lo else \
            np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        pixels = np.repeat(gray[..., None], 3, axis=2)
    else:
        pixels = np.asarray(im.convert("RGB"))
    upscaled = False
    h, w = pixels.shape[:2]
    if min_side and min(h, w) < min_side:
        import cv2

        scale = min_side / min(h, w)
        nw, nh = max(min_side, math.ceil(w * scale)), max(min_side, math.ceil(h * scale))
        pixels = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_CUBIC)
        upscaled = True
    return DecodedImage(np.ascontiguousarray(pixels), mode, size, upscaled)
