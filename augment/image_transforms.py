"""Seedable image transforms: each is a small class holding its parameters, whose `draw` turns
a numpy Generator into concrete operations (JSON-able dicts) for a view spec. Nothing here
touches pixels: `image_ops` replays the operations.

Geometry (why rotations carry a `zoom`): a rotated image has empty (black) corners. The setups
rotate before the centre crop so they fall outside the crop. For a W x H image rotated by a
the largest centred crop of side c that stays inside the rotated image needs
    (c/2)(|cos a| + |sin a|) <= min(W, H)/2  (plus a pixel of margin for interpolation).
For UCM (256 px) and c = 200 this holds up to about +-17 degrees but not at +-20, and UCM's
smaller images (down to ~240 px) fail earlier. Where it fails the rotation is zoomed just enough
that the crop is covered (`zoom` > 1, recorded), rather than showing borders. Random crops are
drawn only where the crop lies inside the rotated image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_EDGE_MARGIN = 1.0  # pixels kept away from the rotated border: bilinear taps there mix in black


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


def check_range(name: str, value: Sequence[float], lo: float, hi: float) -> tuple[float, float]:
    """`value` as a pair (low, high) with lo <= low <= high <= hi; the error names `name`."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair [low, high], not {value!r}") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must be a pair [low, high] with {lo} <= low <= high <= {hi}, "
                         f"not {list(value)!r}")
    return a, b


@dataclass
class GaussianBlur:
    """3x3 Gaussian blur, sigma ~ U(sigma[0], sigma[1]) (paper: [1.1, 1.3])."""

    sigma: tuple[float, float] = (1.1, 1.3)
    kernel: int = 3

    def __post_init__(self) -> None:
        self.sigma = check_range("blur_sigma", self.sigma, 1e-3, 50.0)
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
        self.degrees = check_range("rotation_degrees", self.degrees, -45.0, 45.0)

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
