"""Explicit Arrow schemas shared by stages, so shards are self-describing.

Any tool opens them: ids and text are plain strings, embeddings are FixedSizeList<float32>[d]
with the encoder id, weights source, pooling and dimension in the field metadata.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

# One row per (image, caption) pair as the readers produce it.
RECORD_FIELDS = [
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("caption_id", pa.string(), nullable=False),
    pa.field("caption_index", pa.int16(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("split", pa.string(), nullable=False),
    pa.field("image_path", pa.string()),
    pa.field("caption", pa.string(), nullable=False),
]
RECORD_SCHEMA = pa.schema(RECORD_FIELDS)
RECORD_COLUMNS = tuple(f.name for f in RECORD_FIELDS)

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
                 "test": "test"}

# Text augmentation stages emit one row per variant with these columns after the record's.
TEXT_VARIANT_FIELDS = [
    pa.field("method", pa.string(), nullable=False),
    pa.field("variant_index", pa.int16(), nullable=False),
    pa.field("augmented", pa.string(), nullable=False),
    pa.field("changed", pa.bool_(), nullable=False),
]


def embedding_field(name: str, dim: int, encoder: str, weights: str, pooling: str,
                    **extra: Any) -> pa.Field:
    meta = {"encoder": encoder, "weights": weights, "pooling": pooling, "dim": str(dim)}
    meta.update({k: str(v) for k, v in extra.items()})
    return pa.field(name, pa.list_(pa.float32(), dim), metadata=meta)


def fixed_size_list(matrix: np.ndarray, dtype: pa.DataType = pa.float32()) -> pa.Array:
    """A [n, d] matrix as a FixedSizeList<dtype>[d] column (no copy of a contiguous matrix)."""
    values = np.ascontiguousarray(matrix, dtype=dtype.to_pandas_dtype())
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), dtype),
                                             values.shape[1])


def embedding_column(name: str, matrix: np.ndarray, encoder: str, weights: str, pooling: str,
                     **extra: Any) -> tuple[pa.Field, pa.Array]:
    """The field (with the encoder metadata) and the FixedSizeList<float32> column of an
    embedding matrix [n, d]: the one way duchkit writes embeddings."""
    return (embedding_field(name, matrix.shape[1], encoder, weights, pooling, **extra),
            fixed_size_list(matrix))


def with_stage_metadata(schema: pa.Schema, stage: str, params: dict[str, Any],
                        models: dict[str, str]) -> pa.Schema:
    """Embed the producing stage's identity in the Parquet schema metadata."""
    meta = dict(schema.metadata or {})
    meta[b"duchkit.stage"] = stage.encode()
    meta[b"duchkit.params"] = json.dumps(params, sort_keys=True, default=str).encode()
    meta[b"duchkit.models"] = json.dumps(models, sort_keys=True).encode()
    return schema.with_metadata(meta)


def stage_metadata(schema: pa.Schema) -> dict[str, Any]:
    meta = schema.metadata or {}
    out: dict[str, Any] = {}
    if b"duchkit.stage" in meta:
        out["stage"] = meta[b"duchkit.stage"].decode()
        out["params"] = json.loads(meta[b"duchkit.params"])
        out["models"] = json.loads(meta[b"duchkit.models"])
    return out


# ---------------------------------------------------------------- contracts between stages
# augment-images output: one row per (image, view), images deduplicated from the records.
#   dataset, image_id, label, split, image_path,
#   view_index int16   (0 = the clean view: centre crop only; 1..K = views of the setup)
#   setup string       (NoAugmentation, AugmentedCenterCrop, AugmentedRandomCrop, RandomAugmentation)
#   view_spec string   (JSON of the drawn parameters; the view is recomputable from it)
#   [pixels binary]    (only with --save-pixels)
IMAGE_VIEW_COLUMNS = ("dataset", "image_id", "label", "split", "image_path", "view_index",
                      "setup", "view_spec")
# embed (images) appends:  image_embedding  FixedSizeList<float32>[d]
# embed (texts) appends to a records or text-variant table:
#   caption_embedding    FixedSizeList<float32>[d]   (of `caption`, the original)
#   augmented_embedding  FixedSizeList<float32>[d]   (of `augmented`, when that column exists)
IMAGE_EMBEDDING = "image_embedding"
CAPTION_EMBEDDING = "caption_embedding"
AUGMENTED_EMBEDDING = "augmented_embedding"
