"""View specs: one view as the JSON of its drawn operations, so a view is stored as a few
numbers instead of pixels and `image_ops.apply_spec` recomputes it exactly."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from duchkit.augment.image_decode import DecodedImage
    from duchkit.augment.image_transforms import Compose

SPEC_VERSION = 1


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
    """Draw one view of `image` with `setup`, every random parameter from `rng`."""
    h, w = image.pixels.shape[:2]
    return ViewSpec(setup.name, view, (w, h), setup.draw(rng, w, h), image.mode, image.upscaled)
