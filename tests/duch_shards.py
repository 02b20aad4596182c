"""Write synthetic embedding stage folders in the contract of pipelines.schema, with the store,
so the trainer's loader is tested on the same files the embedding stages produce."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from duchkit.hashing.data import Features
from duchkit.pipelines.schema import (AUGMENTED_EMBEDDING, CAPTION_EMBEDDING, IMAGE_EMBEDDING,
                                      embedding_column)
from duchkit.pipelines.store import write_stage_folder


def _emb(name: str, m: np.ndarray) -> tuple[pa.Field, pa.Array]:
    return embedding_column(name, m, "synthetic", "none", "none")


def write_stages(root: Path, f: Features, shard_rows: int = 500,
                 with_labels: bool = True) -> tuple[Path, Path]:
    n, views, c = f.n, f.image_aug.shape[1], f.captions
    ids = [f"img{i:05d}" for i in range(n)]
    labels = [f"class{int(x)}" if with_labels else None for x in f.labels]
    # images: view 0 clean, 1..V augmented; rows ordered by view so shards mix images
    rows = [(i, v) for v in range(views + 1) for i in range(n)]
    emb = np.stack([f.image[i].numpy() if v == 0 else f.image_aug[i, v - 1].numpy()
                    for i, v in rows])
    field, arr = _emb(IMAGE_EMBEDDING, emb)
    cols = {"dataset": ["synthetic"] * len(rows), "image_id": [ids[i] for i, _ in rows],
            "label": [labels[i] for i, _ in rows], "split": ["train"] * len(rows),
            "image_path": [None] * len(rows)}
    schema = pa.schema([pa.field(k, pa.string()) for k in cols] +
                       [pa.field("view_index", pa.int16()), pa.field("setup", pa.string()),
                        pa.field("view_spec", pa.string()), field])
    table = pa.Table.from_arrays([pa.array(v, pa.string()) for v in cols.values()] + [
        pa.array([v for _, v in rows], pa.int16()),
        pa.array(["AugmentedCenterCrop"] * len(rows)), pa.array(["{}"] * len(rows)), arr],
        schema=schema)
    images = root / "image_embeddings"
    write_stage_folder(images, table, "image_embeddings", "embed", {}, shard_rows)
    # captions: one row per (image, caption), in reverse order to test the join
    crow = [(i, j) for i in reversed(range(n)) for j in range(c)]
    temb = np.stack([f.text[i, j].numpy() for i, j in crow])
    taug = np.stack([f.text_aug[i, j].numpy() for i, j in crow])
    f1, a1 = _emb(CAPTION_EMBEDDING, temb)
    f2, a2 = _emb(AUGMENTED_EMBEDDING, taug)
    tcols = {"dataset": ["synthetic"] * len(crow), "image_id": [ids[i] for i, _ in crow],
             "caption_id": [f"{ids[i]}#{j}" for i, j in crow],
             "label": [labels[i] for i, _ in crow], "split": ["train"] * len(crow),
             "image_path": [None] * len(crow),
             "caption": [f"caption {j} of {ids[i]}" for i, j in crow]}
    tschema = pa.schema([pa.field(k, pa.string()) for k in tcols] +
                        [pa.field("caption_index", pa.int16()), f1, f2])
    ttable = pa.Table.from_arrays([pa.array(v, pa.string()) for v in tcols.values()] + [
        pa.array([j for _, j in crow], pa.int16()), a1, a2], schema=tschema)
    texts = root / "text_embeddings"
    write_stage_folder(texts, ttable, "text_embeddings", "embed", {}, shard_rows)
    return images, texts
