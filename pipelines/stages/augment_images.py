"""Stage `augment-images`: records (one row per caption) -> one row per (image, view).

View 0 of every image is the clean view (centre crop only); views 1..K follow the chosen setup
with parameters drawn from `ctx.rng_for("image-view", image_id, view)`, so a shard recomputed
alone is identical to the same shard in a full run. Each row carries its view spec (JSON); the
pixels themselves are written only with `save_pixels`, since `embed` recomputes a view from its
spec exactly.

Images are deduplicated within a shard (five captions -> one image). An image whose captions
straddle a shard boundary is emitted by both shards with identical rows (same seed key);
consumers take distinct (image_id, view_index).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from duchkit.augment.image_decode import ImageDecodeError, decode_rgb
from duchkit.augment.image_ops import apply_spec
from duchkit.augment.image_setups import CLEAN_SETUP, SETUPS, ImageAugParams, build_setup
from duchkit.augment.view_spec import draw_view
from duchkit.pipelines.schema import IMAGE_VIEW_COLUMNS
from duchkit.pipelines.stage import ConfigError, Stage, StageContext
from duchkit.pipelines.store import write_table

ON_BAD_IMAGE = ("error", "skip")
PIXEL_FORMATS = ("png", "jpeg")


class BadImage(ValueError):
    """An image cannot be used; the message names the file and the reason."""


def read_image(path: str | None, image_id: str, min_side: int,
               max_pixels: int | None = None):
    """Read + fully decode one image file, naming it in every failure. No pixel limit by
    default: the records' images passed the dataset's limit at validation; a query image from
    outside an archive passes one."""
    if not path:
        raise BadImage(f"image {image_id!r}: no image_path in the records")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadImage(f"image {image_id!r}: cannot read {path} ({exc.strerror or exc})") from exc
    try:
        return decode_rgb(data, path, min_side, max_pixels)
    except ImageDecodeError as exc:
        raise BadImage(f"image {image_id!r}: {exc}") from exc


def encode_pixels(pixels: np.ndarray, fmt: str) -> bytes:
    import cv2

    ext = ".png" if fmt == "png" else ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"cannot encode a {pixels.shape} view as {fmt}")
    return buf.tobytes()


def write_rejects(ctx: StageContext, rows: list[dict]) -> Path | None:
    """Lenient mode: bad images go to `<stage>/rejects/<hash of the shard's ids>.parquet`, one
    file per input shard, named by content so a recomputed shard overwrites its own file."""
    if not rows or ctx.stage_dir is None:
        return None
    key = hashlib.sha256("\n".join(r["image_id"] for r in rows).encode()).hexdigest()[:16]
    path = Path(ctx.stage_dir) / "rejects" / f"rejects-{key}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, pa.Table.from_pylist(rows))
    return path


@dataclass
class AugmentImages(Stage):
    kind: ClassVar[str] = "augment-images"
    version: ClassVar[int] = 2  # 2: view 0 is "CenterCrop"; NoAugmentation is the whole image
    requires: ClassVar[tuple[str, ...]] = ("dataset", "image_id", "label", "split", "image_path")

    augmentation: str = "AugmentedCenterCrop"  # the setup (`--setup`); one of SETUPS
    views: int = 1                             # augmented views per image, besides view 0
    crop: int = 200
    blur_sigma: list[float] = field(default_factory=lambda: [1.1, 1.3])
    rotation_degrees: list[float] = field(default_factory=lambda: [-10.0, -5.0])
    jitter_strength: float = 0.5
    save_pixels: bool = False
    pixel_format: str = "png"
    on_bad_image: str = "error"                # "skip": write rejects and go on

    def __post_init__(self) -> None:
        if self.augmentation not in SETUPS:
            raise ConfigError(f"augmentation (--setup) must be one of {sorted(SETUPS)}, "
                              f"not {self.augmentation!r}")
        if not isinstance(self.views, int) or self.views < 0:
            raise ConfigError(f"views must be an integer >= 0, not {self.views!r}")
        if self.pixel_format not in PIXEL_FORMATS:
            raise ConfigError(f"pixel_format must be one of {PIXEL_FORMATS}, "
                              f"not {self.pixel_format!r}")
        if self.on_bad_image not in ON_BAD_IMAGE:
            raise ConfigError(f"on_bad_image must be one of {ON_BAD_IMAGE}, "
                              f"not {self.on_bad_image!r}")
        try:
            self._params = self.aug_params()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def aug_params(self) -> ImageAugParams:
        return ImageAugParams(self.crop, tuple(self.blur_sigma), tuple(self.rotation_degrees),
                              self.jitter_strength)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        carried = [input_schema.field(c) for c in IMAGE_VIEW_COLUMNS[:5]]  # from the records
        schema = pa.schema(carried + [
            pa.field("view_index", pa.int16(), nullable=False),
            pa.field("setup", pa.string(), nullable=False),
            pa.field("view_spec", pa.string(), nullable=False),
        ])
        if self.save_pixels:
            schema = schema.append(pa.field("pixels", pa.binary()))
        return schema

    def _decoded(self, firsts: list[tuple[str, int]], paths: list[str], chunk: int = 256):
        """Decode images in a thread pool (PIL and OpenCV release the GIL), a chunk at a time
        so memory stays bounded; yields (image_id, row, DecodedImage | BadImage) in order.
        Every image is decoded fully here, so a truncated file is caught at this stage."""
        def load(item):
            image_id, i = item
            try:
                return image_id, i, read_image(paths[i], image_id, self.crop)
            except BadImage as exc:
                return image_id, i, exc

        threads = max(1, min(16, os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(firsts), chunk):
                yield from pool.map(load, firsts[start:start + chunk])

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        clean = build_setup(CLEAN_SETUP, self._params)
        setup = build_setup(self.augmentation, self._params)
        cols = {c: table.column(c).to_pylist() for c in self.requires}
        out: dict[str, list] = {c: [] for c in IMAGE_VIEW_COLUMNS}
        if self.save_pixels:
            out["pixels"] = []
        rejects: list[dict] = []
        firsts: dict[str, int] = {}  # image id -> its first row, in input order
        for i, image_id in enumerate(cols["image_id"]):
            firsts.setdefault(image_id, i)
        for image_id, i, image in self._decoded(list(firsts.items()), cols["image_path"]):
            if isinstance(image, BadImage):
                if self.on_bad_image == "error":
                    raise ConfigError(f"augment-images: {image} (set on_bad_image = \"skip\" or "
                                      "--lenient to record it in rejects and go on)") from image
                rejects.append({"image_id": image_id, "image_path": cols["image_path"][i],
                                "reason": str(image)})
                continue
            for view in range(self.views + 1):
                rng = ctx.rng_for("image-view", image_id, view)
                spec = draw_view(clean if view == 0 else setup, rng, image, view)
                for c in ("dataset", "image_id", "label", "split", "image_path"):
                    out[c].append(cols[c][i])
                out["view_index"].append(view)
                out["setup"].append(spec.setup)
                out["view_spec"].append(spec.to_json())
                if self.save_pixels:
                    out["pixels"].append(encode_pixels(apply_spec(image.pixels, spec),
                                                       self.pixel_format))
        path = write_rejects(ctx, rejects)
        if path is not None:
            ctx.log.warning("augment-images: %d image(s) rejected, see %s", len(rejects), path)
        schema = self.output_schema(table.schema)
        return pa.table({c: pa.array(out[c], schema.field(c).type) for c in schema.names},
                        schema=schema)
