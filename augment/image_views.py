"""Image views for contrastive training: seedable transforms, the paper's setups as compositions,
and JSON view specs that reproduce a view exactly.

A view is made in two steps, so that a view can be stored as a few numbers instead of pixels:
1. `draw`: every random parameter is drawn from a numpy Generator the caller seeds (duchkit seeds
   it by (run seed, image id, view index)), giving a *view spec*: a JSON-able dict of operations
   with their concrete parameters;
2. `apply_spec`: deterministic albumentations operations replay the spec on the decoded image.
   Nothing here touches albumentations' global random state, so the same spec gives the same
   pixels in any process, in any order.

Geometry (why rotations carry a `zoom`): a rotated image has empty (black) corners. The paper
rotates before the centre crop so they fall outside the crop. For a W x H image rotated by a
the largest centred crop of side c that stays inside the rotated image needs
    (c/2)(|cos a| + |sin a|) <= min(W, H)/2  (plus a pixel of margin for interpolation).
For UCM (256 px) and c = 200 this holds up to about +-17 degrees; at +-20 it does not (199.7 px
fit), and UCM's smaller images (down to ~240 px) fail earlier. Where it fails we zoom the
rotation just enough that the crop is covered (`zoom` > 1, recorded), rather than show borders.
Random crops are drawn only where the crop lies inside the rotated image.
"""
from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import albumentations as A
import cv2
import numpy as np

SPEC_VERSION = 1
_EDGE_MARGIN = 1.0  # pixels kept away from the rotated border: bilinear taps there mix in black


# ---------------------------------------------------------------- decoding

@dataclass
class DecodedImage:
    pixels: np.ndarray  # H x W x 3 uint8, RGB
    mode: str           # the source's PIL mode (RGB, L, RGBA, I;16, ...)
    size: tuple[int, int]  # source (width, height), before any upscaling
    upscaled: bool      # resized up because smaller than the crop


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message names the image."""


def decode_rgb(data: bytes, name: str, min_side: int = 0) -> DecodedImage:
    """Decode image bytes to RGB uint8, fully (truncated files fail here, not later).

    Grayscale and palette images are converted, alpha is dropped, 16/32-bit integer images are
    scaled to 8 bit by their type range; images with a side below `min_side` are resized up
    (bicubic, aspect kept) so that a crop of `min_side` fits, and flagged."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
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
        scale = min_side / min(h, w)
        nw, nh = max(min_side, math.ceil(w * scale)), max(min_side, math.ceil(h * scale))
        pixels = cv2.resize(pixels, (nw, nh), interpolation=cv2.INTER_CUBIC)
        upscaled = True
    return DecodedImage(np.ascontiguousarray(pixels), mode, size, upscaled)


# ---------------------------------------------------------------- drawing state

@dataclass
class Geometry:
    """What later draws need to know about earlier ones: the canvas, the crop, the rotation."""

    width: int
    height: int
    crop: int
    angle: float = 0.0
    zoom: float = 1.0

    def crop_fits(self, dx: float, dy: float) -> bool:
        """Is a crop centred at (dx, dy) from the canvas centre inside the rotated image?

        The test holds for either rotation sign (absolute values), so it does not depend on
        the library's angle convention."""
        a = math.radians(self.angle)
        c, s = abs(math.cos(a)), abs(math.sin(a))
        half = self.crop / 2.0
        reach = half * (c + s) + _EDGE_MARGIN
        hw, hh = (self.zoom * self.width - 1) / 2.0, (self.zoom * self.height - 1) / 2.0
        if self.angle == 0.0 and self.zoom == 1.0:
            return abs(dx) + half <= self.width / 2.0 and abs(dy) + half <= self.height / 2.0
        inside_rotated = (abs(dx) * c + abs(dy) * s + reach <= hw
                          and abs(dx) * s + abs(dy) * c + reach <= hh)
        inside_canvas = abs(dx) + half <= self.width / 2.0 and abs(dy) + half <= self.height / 2.0
        return inside_rotated and inside_canvas

    def zoom_for_centre_crop(self, angle: float) -> float:
        """The smallest zoom (>= 1) at which a centred crop stays inside the rotated image."""
        a = math.radians(angle)
        reach = (self.crop / 2.0) * (abs(math.cos(a)) + abs(math.sin(a))) + _EDGE_MARGIN
        need = (2 * reach + 1) / min(self.width, self.height)
        return max(1.0, need)


def _r(x: float) -> float:
    """Round drawn floats so the JSON spec and the in-memory spec give identical pixels."""
    return round(float(x), 6)


def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair [low, high], not {value!r}") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must be a pair [low, high] with {lo} <= low <= high <= {hi}, "
                         f"not {list(value)!r}")
    return a, b


# ---------------------------------------------------------------- transforms
# Each transform draws its parameters (`draw`) and is replayed by name (`APPLY`) from the spec.

@dataclass
class GaussianBlur:
    """3x3 Gaussian blur, sigma ~ U(sigma[0], sigma[1]) (paper: [1.1, 1.3])."""

    sigma: tuple[float, float] = (1.1, 1.3)
    kernel: int = 3

    def __post_init__(self) -> None:
        self.sigma = _check_range("blur_sigma", self.sigma, 1e-3, 50.0)
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be an odd integer >= 3, not {self.kernel!r}")

    def draw(self, rng: np.random.Generator, geom: Geometry) -> list[dict]:
        return [{"op": "gaussian_blur", "sigma": _r(rng.uniform(*self.sigma)),
                 "kernel": self.kernel}]


@dataclass
class Rotate:
    """Rotation by angle ~ U(degrees[0], degrees[1]) about the centre, zoomed only if the crop
    would otherwise show the empty corners (see the module docstring)."""

    degrees: tuple[float, float] = (-10.0, -5.0)

    def __post_init__(self) -> None:
        self.degrees = _check_range("rotation_degrees", self.degrees, -45.0, 45.0)

    def draw(self, rng: np.random.Generator, geom: Geometry) -> list[dict]:
        angle = _r(rng.uniform(*self.degrees))
        zoom = math.ceil(geom.zoom_for_centre_crop(angle) * 1e6) / 1e6  # round up, never down
        geom.angle, geom.zoom = angle, zoom
        return [{"op": "rotate", "angle": angle, "zoom": zoom}]


@dataclass
class ColorJitter:
    """Colour jitter of one strength s: brightness, contrast, saturation 0.8s, hue 0.2s; factors
    drawn as torchvision does (U(1-x, 1+x), hue U(-x, x)) in a random order."""

    strength: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.strength, (int, float)) and 0 <= self.strength <= 1.25):
            raise ValueError(f"jitter_strength must be a number in [0, 1.25] (hue 0.2s <= 0.25), "
                             f"not {self.strength!r}")

    def draw(self, rng: np.random.Generator, geom: Geometry) -> list[dict]:
        s = float(self.strength)
        b = c = sat = 0.8 * s
        h = 0.2 * s
        return [{"op": "color_jitter",
                 "brightness": _r(rng.uniform(max(0.0, 1 - b), 1 + b)),
                 "contrast": _r(rng.uniform(max(0.0, 1 - c), 1 + c)),
                 "saturation": _r(rng.uniform(max(0.0, 1 - sat), 1 + sat)),
                 "hue": _r(rng.uniform(-h, h)),
                 "order": [int(i) for i in rng.permutation(4)]}]


@dataclass
class CenterCrop:
    size: int = 200

    def draw(self, rng: np.random.Generator, geom: Geometry) -> list[dict]:
        return [{"op": "crop", "x": (geom.width - self.size) // 2,
                 "y": (geom.height - self.size) // 2, "size": self.size}]


@dataclass
class RandomCrop:
    """A crop at a uniformly drawn position among those inside the (rotated) image."""

    size: int = 200
    tries: int = 64

    def draw(self, rng: np.random.Generator, geom: Geometry) -> list[dict]:
        free_x, free_y = geom.width - self.size, geom.height - self.size
        for _ in range(self.tries):
            x, y = int(rng.integers(0, free_x + 1)), int(rng.integers(0, free_y + 1))
            if geom.crop_fits(x - free_x / 2.0, y - free_y / 2.0):
                return [{"op": "crop", "x": x, "y": y, "size": self.size}]
        # Rotation leaves almost no slack: the centre is always valid (Rotate zoomed for it).
        return CenterCrop(self.size).draw(rng, geom)


@dataclass
class OneOf:
    """Exactly one of the options per view, chosen uniformly."""

    options: list[Any]

    def draw(self, rng: np.random.Generator, geom: Geometry) -> list[dict]:
        return self.options[int(rng.integers(len(self.options)))].draw(rng, geom)


@dataclass
class Compose:
    """A named setup: its steps draw in order, then the ops are applied in order."""

    name: str
    steps: list[Any]
    crop: int = 200

    def draw(self, rng: np.random.Generator, width: int, height: int) -> list[dict]:
        geom = Geometry(width, height, self.crop)
        ops: list[dict] = []
        for step in self.steps:
            ops.extend(step.draw(rng, geom))
        return ops


# ---------------------------------------------------------------- deterministic application

# One instance per op, used only through its deterministic `apply(img, **params)` with the
# parameters of the spec: no per-call construction (costly in albumentations 2), no use of its
# random state.
_JITTER = A.ColorJitter(p=1.0)
_BLUR = A.GaussianBlur(p=1.0)
_AFFINE = A.Affine(interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)
_CROP = A.Crop(x_min=0, y_min=0, x_max=1, y_max=1, p=1.0)


def _apply_blur(img: np.ndarray, op: dict) -> np.ndarray:
    from albumentations.augmentations.blur.functional import create_gaussian_kernel_1d

    kernel = create_gaussian_kernel_1d(float(op["sigma"]), int(op["kernel"]))
    return _BLUR.apply(img, kernel=kernel)


def rotation_matrix(width: int, height: int, angle: float, zoom: float) -> np.ndarray:
    """3x3 forward matrix: rotate by `angle` degrees (counter-clockwise, as torchvision's
    rotate) about the image centre and scale by `zoom`, keeping the canvas."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    return np.vstack([cv2.getRotationMatrix2D(centre, angle, zoom), [0.0, 0.0, 1.0]])


def _apply_rotate(img: np.ndarray, op: dict) -> np.ndarray:
    h, w = img.shape[:2]
    matrix = rotation_matrix(w, h, float(op["angle"]), float(op["zoom"]))
    return _AFFINE.apply(img, matrix=matrix, output_shape=(h, w))


def _apply_jitter(img: np.ndarray, op: dict) -> np.ndarray:
    return _JITTER.apply(img, brightness=float(op["brightness"]), contrast=float(op["contrast"]),
                         saturation=float(op["saturation"]), hue=float(op["hue"]),
                         order=list(op["order"]))


def _apply_crop(img: np.ndarray, op: dict) -> np.ndarray:
    x, y, n = int(op["x"]), int(op["y"]), int(op["size"])
    if y + n > img.shape[0] or x + n > img.shape[1] or x < 0 or y < 0:
        raise ValueError(f"crop {op} does not fit an image of {img.shape[1]}x{img.shape[0]}")
    return _CROP.apply(img, crop_coords=(x, y, x + n, y + n))


APPLY: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "gaussian_blur": _apply_blur,
    "rotate": _apply_rotate,
    "color_jitter": _apply_jitter,
    "crop": _apply_crop,
}


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to the encoder's square input (bilinear, as PIL/torchvision do for upsampling)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return _resizer(size).apply(img)


@functools.lru_cache(maxsize=8)
def _resizer(size: int) -> A.Resize:
    return A.Resize(size, size, interpolation=cv2.INTER_LINEAR, p=1.0)


# ---------------------------------------------------------------- setups and view specs

@dataclass
class ImageAugParams:
    """Parameters of the image setups (paper defaults: blur [1.1, 1.3], rotation [-10, -5],
    jitter strength 0.5, crop 200)."""

    crop: int = 200
    blur_sigma: tuple[float, float] = (1.1, 1.3)
    rotation_degrees: tuple[float, float] = (-10.0, -5.0)
    jitter_strength: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.crop, int) or self.crop < 8:
            raise ValueError(f"crop must be an integer >= 8, not {self.crop!r}")
        self.blur_sigma = _check_range("blur_sigma", self.blur_sigma, 1e-3, 50.0)
        self.rotation_degrees = _check_range("rotation_degrees", self.rotation_degrees, -45, 45)
        ColorJitter(self.jitter_strength)  # validates


def _no_augmentation(p: ImageAugParams) -> Compose:
    return Compose("NoAugmentation", [CenterCrop(p.crop)], p.crop)


def _augmented_center_crop(p: ImageAugParams) -> Compose:
    return Compose("AugmentedCenterCrop", [GaussianBlur(p.blur_sigma),
                                           Rotate(p.rotation_degrees), CenterCrop(p.crop)], p.crop)


def _augmented_random_crop(p: ImageAugParams) -> Compose:
    return Compose("AugmentedRandomCrop", [GaussianBlur(p.blur_sigma),
                                           Rotate(p.rotation_degrees), RandomCrop(p.crop)], p.crop)


def _random_augmentation(p: ImageAugParams) -> Compose:
    one = OneOf([Rotate(p.rotation_degrees), ColorJitter(p.jitter_strength),
                 GaussianBlur(p.blur_sigma)])
    return Compose("RandomAugmentation", [one, CenterCrop(p.crop)], p.crop)


# One method alone, then the centre crop: the single-parameter sweeps of the paper's Fig. 5.
def _blur_only(p: ImageAugParams) -> Compose:
    return Compose("BlurOnly", [GaussianBlur(p.blur_sigma), CenterCrop(p.crop)], p.crop)


def _rotation_only(p: ImageAugParams) -> Compose:
    return Compose("RotationOnly", [Rotate(p.rotation_degrees), CenterCrop(p.crop)], p.crop)


def _jitter_only(p: ImageAugParams) -> Compose:
    return Compose("JitterOnly", [ColorJitter(p.jitter_strength), CenterCrop(p.crop)], p.crop)


SETUPS: dict[str, Callable[[ImageAugParams], Compose]] = {
    "BlurOnly": _blur_only,
    "RotationOnly": _rotation_only,
    "JitterOnly": _jitter_only,
    "NoAugmentation": _no_augmentation,
    "AugmentedCenterCrop": _augmented_center_crop,
    "AugmentedRandomCrop": _augmented_random_crop,
    "RandomAugmentation": _random_augmentation,
}
CLEAN_SETUP = "NoAugmentation"  # view 0 of every image


def build_setup(name: str, params: ImageAugParams | None = None) -> Compose:
    if name not in SETUPS:
        raise ValueError(f"setup must be one of {sorted(SETUPS)}, not {name!r}")
    return SETUPS[name](params or ImageAugParams())


@dataclass
class ViewSpec:
    """Everything needed to recompute one view from the source image."""

    setup: str
    view: int
    size: tuple[int, int]   # (width, height) of the decoded (possibly upscaled) image
    ops: list[dict] = field(default_factory=list)
    mode: str = "RGB"
    upscaled: bool = False

    def to_json(self) -> str:
        return json.dumps({"v": SPEC_VERSION, "setup": self.setup, "view": self.view,
                           "size": list(self.size), "mode": self.mode,
                           "upscaled": self.upscaled, "ops": self.ops},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ViewSpec":
        d = json.loads(text)
        if d.get("v") != SPEC_VERSION:
            raise ValueError(f"view_spec version {d.get('v')!r} is not {SPEC_VERSION}")
        return cls(d["setup"], int(d["view"]), tuple(d["size"]), d["ops"], d.get("mode", "RGB"),
                   bool(d.get("upscaled", False)))


def draw_view(setup: Compose, rng: np.random.Generator, image: DecodedImage,
              view: int) -> ViewSpec:
    h, w = image.pixels.shape[:2]
    return ViewSpec(setup.name, view, (w, h), setup.draw(rng, w, h), image.mode, image.upscaled)


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
