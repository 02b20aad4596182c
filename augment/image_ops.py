"""Pixels: replay a view spec's operations on a decoded image, deterministically.

Each op is an albumentations transform used only through its deterministic `apply(img,
**params)` with the parameters of the spec, never through its random state, so the same spec
gives the same pixels in any process, in any order. albumentations is imported on the first
op, not with this module: it imports torch, which code that only draws specs never needs.
"""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations as A

    from duchkit.augment.view_spec import ViewSpec

# albumentations asks PyPI for a newer version of itself on import, in every process that imports
# it (1.2 s here, up to its 2 s timeout offline): an offline pipeline makes no network calls.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@functools.lru_cache(maxsize=None)
def _transforms() -> SimpleNamespace:
    """One instance per op, made once per process: constructing them per call is costly."""
    import albumentations as A

    return SimpleNamespace(
        jitter=A.ColorJitter(p=1.0),
        blur=A.GaussianBlur(p=1.0),
        affine=A.Affine(interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0,
                        p=1.0),
        crop=A.Crop(x_min=0, y_min=0, x_max=1, y_max=1, p=1.0))


def _apply_blur(img: np.ndarray, op: dict) -> np.ndarray:
    from albumentations.augmentations.blur.functional import create_gaussian_kernel_1d

    kernel = create_gaussian_kernel_1d(float(op["sigma"]), int(op["kernel"]))
    return _transforms().blur.apply(img, kernel=kernel)


def rotation_matrix(width: int, height: int, angle: float, zoom: float) -> np.ndarray:
    """3x3 forward matrix: rotate by `angle` degrees (counter-clockwise, as torchvision's
    rotate) about the image centre and scale by `zoom`, keeping the canvas."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    return np.vstack([cv2.getRotationMatrix2D(centre, angle, zoom), [0.0, 0.0, 1.0]])


def _apply_rotate(img: np.ndarray, op: dict) -> np.ndarray:
    h, w = img.shape[:2]
    matrix = rotation_matrix(w, h, float(op["angle"]), float(op["zoom"]))
    return _transforms().affine.apply(img, matrix=matrix, output_shape=(h, w))


def _apply_jitter(img: np.ndarray, op: dict) -> np.ndarray:
    return _transforms().jitter.apply(
        img, brightness=float(op["brightness"]), contrast=float(op["contrast"]),
        saturation=float(op["saturation"]), hue=float(op["hue"]), order=list(op["order"]))


def _apply_crop(img: np.ndarray, op: dict) -> np.ndarray:
    x, y, n = int(op["x"]), int(op["y"]), int(op["size"])
    if y + n > img.shape[0] or x + n > img.shape[1] or x < 0 or y < 0:
        raise ValueError(f"crop {op} does not fit an image of {img.shape[1]}x{img.shape[0]}")
    return _transforms().crop.apply(img, crop_coords=(x, y, x + n, y + n))


# op name in a view spec -> its deterministic application
APPLY: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "gaussian_blur": _apply_blur,
    "rotate": _apply_rotate,
    "color_jitter": _apply_jitter,
    "crop": _apply_crop,
}


def apply_spec(pixels: np.ndarray, spec: ViewSpec) -> np.ndarray:
    """Replay a view spec on the decoded image: same spec, same pixels."""
    h, w = pixels.shape[:2]
    if (w, h) != tuple(spec.size):
        raise ValueError(f"view_spec was drawn for a {spec.size[0]}x{spec.size[1]} image, "
                         f"this one is {w}x{h} (did the file change?)")
    out = pixels
    for op in spec.ops:
        if op["op"] not in APPLY:
            raise ValueError(f"view_spec: unknown op {op['op']!r}; known: {sorted(APPLY)}")
        out = APPLY[op["op"]](out, op)
    return np.ascontiguousarray(out)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to the encoder's square input (bilinear, as PIL/torchvision do for upsampling)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return _resizer(size).apply(img)


@functools.lru_cache(maxsize=8)
def _resizer(size: int) -> A.Resize:
    import albumentations as A

    return A.Resize(size, size, interpolation=cv2.INTER_LINEAR, p=1.0)
