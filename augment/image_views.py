"""Image views for contrastive training, in one namespace: decoding, seedable transforms, the
paper's setups as compositions, and JSON view specs that reproduce a view exactly.

A view is made in two steps, so that a view can be stored as a few numbers instead of pixels:
1. `draw_view`: every random parameter is drawn from a numpy Generator the caller seeds
   (duchkit seeds it by (run seed, image id, view index)), giving a *view spec*: a JSON-able
   list of operations with their concrete parameters (`image_setups`, `image_transforms`,
   `view_spec`);
2. `apply_spec`: deterministic operations replay the spec on the decoded image (`image_ops`).
   Nothing touches a random state of the image library, so the same spec gives the same pixels
   in any process, in any order.

Code that only draws specs can import the modules it needs directly: none of them but the
pixel operations (on first use) imports albumentations or torch.
"""
from __future__ import annotations

from duchkit.augment.image_decode import DecodedImage, ImageDecodeError, decode_rgb
from duchkit.augment.image_ops import APPLY, apply_spec, resize, rotation_matrix
from duchkit.augment.image_setups import CLEAN_SETUP, SETUPS, ImageAugParams, build_setup
from duchkit.augment.image_transforms import (CenterCrop, ColorJitter, Compose, GaussianBlur,
                                              Geometry, OneOf, RandomCrop, Rotate, check_range)
from duchkit.augment.view_spec import SPEC_VERSION, ViewSpec, draw_view

__all__ = [
    "APPLY", "CLEAN_SETUP", "SETUPS", "SPEC_VERSION", "CenterCrop", "ColorJitter", "Compose",
    "DecodedImage", "GaussianBlur", "Geometry", "ImageAugParams", "ImageDecodeError", "OneOf",
    "RandomCrop", "Rotate", "ViewSpec", "apply_spec", "build_setup", "check_range",
    "decode_rgb", "draw_view", "resize", "rotation_matrix",
]
