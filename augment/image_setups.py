"""The paper's image augmentation setups, as compositions of transforms, by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from duchkit.augment.image_transforms import (CenterCrop, ColorJitter, Compose, GaussianBlur,
                                              OneOf, RandomCrop, Rotate, check_range)


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
        self.blur_sigma = check_range("blur_sigma", self.blur_sigma, 1e-3, 50.0)
        self.rotation_degrees = check_range("rotation_degrees", self.rotation_degrees, -45, 45)
        ColorJitter(self.jitter_strength)  # validates


def _clean_view(p: ImageAugParams) -> Compose:
    """View 0 of every image: the centre crop, no augmentation."""
    return Compose("CenterCrop", [CenterCrop(p.crop)], p.crop)


def _no_augmentation(p: ImageAugParams) -> Compose:
    """The paper's "only center cropping ... to produce different views": the whole image,
    uncropped, is the second view beside the centre crop of view 0 (as the authors' code pairs
    the image resized to the encoder input with its centre crop). A second centre crop would
    make the image intra-modal term compare identical embeddings."""
    return Compose("NoAugmentation", [], p.crop)


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
    "CenterCrop": _clean_view,
    "NoAugmentation": _no_augmentation,
    "AugmentedCenterCrop": _augmented_center_crop,
    "AugmentedRandomCrop": _augmented_random_crop,
    "RandomAugmentation": _random_augmentation,
}
CLEAN_SETUP = "CenterCrop"  # view 0 of every image


def build_setup(name: str, params: ImageAugParams | None = None) -> Compose:
    if name not in SETUPS:
        raise ValueError(f"setup must be one of {sorted(SETUPS)}, not {name!r}")
    return SETUPS[name](params or ImageAugParams())
