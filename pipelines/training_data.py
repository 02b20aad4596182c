"""Build the trainer's tensors from the embedding stages' shards.

Inputs (contracts in pipelines.schema):
  images stage: one row per (image, view_index) with `image_embedding`; view 0 is the clean view,
                views 1..K the augmented ones.
  texts stage:  one row per caption (record columns, optionally one row per text variant) with
                `caption_embedding` and, from a text augmentation stage, `augmented_embedding`.
Output: hashing.data.Features (one row per image: clean view, K augmented views, its C captions
and their augmented versions, class id) plus the ids needed to write codes back as shards.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from duchkit.hashing.data import Features
from duchkit.pipelines.schema import AUGMENTED_EMBEDDING, CAPTION_EMBEDDING, IMAGE_EMBEDDING
from duchkit.pipelines.store import StageStore

log = logging.getLogger("duchkit")


@dataclass
class Archive:
    features: Features
    image_ids: list[str]
    caption_ids: list[list[str]]  # [N][C]
    label_names: list[str]  # class id -> name; labels -1 when unknown
    has_labels: bool
    sources: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _read_stage(folder: Path, column: str, needed: tuple[str, ...]) -> tuple[pa.Table, dict]:
    store = StageStore(Path(folder))
    if not store.is_complete():
        raise FileNotFoundError(f"{folder} is not a completed stage folder (no _manifest.json)")
    tables, dim, meta = [], None, {}
    for path in store.shard_paths():
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in (column,) + needed if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (has {table.column_names})")
        for name in [c for c in (column, AUGMENTED_EMBEDDING) if c in table.column_names]:
            f = table.schema.field(name)
            if not pa.types.is_fixed_size_list(f.type):
                raise ValueError(f"{path}: column {name} is {f.type}, expected "
                                 "FixedSizeList<float32>[d]")
            d = f.type.list_size
            if name == column:
                if dim is not None and d != dim:
                    raise ValueError(f"{path}: {name} has {d} dims, earlier shards of {folder} "
                                     f"have {dim}")
                dim = d
                meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
            values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values.reshape(table.num_rows, d)).all(1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{path}: row {row} (image_id "
                                 f"{table.column('image_id')[row].as_py()!r}) has NaN/inf in "
                                 f"{name} ({int(bad.sum())} such row(s))")
        tables.append(table)
    if not tables:
        raise ValueError(f"{folder} has no shards")
    return pa.concat_tables(tables, promote_options="default"), {"dim": dim, **meta}


def _matrix(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def load_archive(images_dir: Path, texts_dir: Path) -> Archive:
    """Join the image and text embedding stages by image_id into one Features set."""
    warnings: list[str] = []
    img, img_meta = _read_stage(images_dir, IMAGE_EMBEDDING, ("image_id", "view_index"))
    txt, txt_meta = _read_stage(texts_dir, CAPTION_EMBEDDING, ("image_id", "caption_index"))

    # ---- images: clean view 0 and augmented views 1..K, same K for all
    ids = np.asarray(img.column("image_id").to_pylist(), dtype=object)
    views = img.column("view_index").to_numpy()
    emb = _matrix(img, IMAGE_EMBEDDING)
    image_ids = sorted(set(ids[views == 0]))
    if not image_ids:
        raise ValueError(f"{images_dir}: no rows with view_index 0 (the clean view)")
    pos = {k: i for i, k in enumerate(image_ids)}
    aug_views = sorted(set(views[views > 0].tolist()))
    n, d = len(image_ids), emb.shape[1]
    clean = np.zeros((n, d), np.float32)
    if not aug_views:
        warnings.append(f"{images_dir} has only view 0: the augmented image view is the clean "
                        "one (the paper's NoAugmentation setup)")
        aug_views = [0]
    aug = np.full((n, len(aug_views), d), np.nan, np.float32)
    vpos = {v: j for j, v in enumerate(aug_views)}
    for row, (iid, v) in enumerate(zip(ids, views)):
        if iid not in pos:
            raise ValueError(f"{images_dir}: image {iid!r} has view {v} but no clean view 0")
        if v == 0:
            clean[pos[iid]] = emb[row]
        if v in vpos:
            aug[pos[iid], vpos[v]] = emb[row]
    missing = np.isnan(aug).any(2)
    if missing.any():
        i, j = np.argwhere(missing)[0]
        raise ValueError(f"{images_dir}: image {image_ids[i]!r} lacks view {aug_views[j]} "
                         "(every image needs the same views)")

    # ---- labels (from the image rows; the text rows carry the same)
    labels_col = (img.column("label").to_pylist() if "label" in img.column_names
                  else [None] * img.num_rows)
    label_of = {iid: lab for iid, lab, v in zip(ids, labels_col, views) if v == 0}
    names = sorted({lab for lab in label_of.values() if lab is not None})
    has_labels = len(names) > 0 and all(label_of[i] is not None for i in image_ids)
    lid = {nm: i for i, nm in enumerate(names)}
    labels = np.array([lid.get(label_of[i], -1) if label_of[i] is not None else -1
                       for i in image_ids], np.int64)
    if not has_labels:
        warnings.append("some images have no class label: class-label relevance is unavailable "
                        "for them (evaluation falls back to paired-caption relevance)")

    # ---- captions: one per (image, caption_index); several text variants (rule-augment or
    # back-translation `variants = N`) all reach the trainer, which draws one per epoch
    sort_keys = [("image_id", "ascending"), ("caption_index", "ascending")]
    if "variant_index" in txt.column_names:
        sort_keys.append(("variant_index", "ascending"))
    txt = txt.take(pc.sort_indices(txt, sort_keys))
    all_ids = txt.column("image_id").to_pylist()
    all_idx = txt.column("caption_index").to_pylist()
    starts = [i for i in range(len(all_ids)) if i == 0 or (all_ids[i], all_idx[i]) !=
              (all_ids[i - 1], all_idx[i - 1])]
    per_caption = np.diff(starts + [len(all_ids)])
    if len(set(per_caption.tolist())) > 1:
        i = int(np.argmax(per_caption != per_caption[0]))
        raise ValueError(f"{texts_dir}: caption {all_idx[starts[i]]} of image "
                         f"{all_ids[starts[i]]!r} has {per_caption[i]} variant(s), others have "
                         f"{per_caption[0]}: every caption needs the same number")
    n_variants = int(per_caption[0]) if len(per_caption) else 1
    full = txt
    txt = txt.take(pa.array(starts))
    t_ids = [all_ids[i] for i in starts]
    temb = _matrix(txt, CAPTION_EMBEDDING)
    if AUGMENTED_EMBEDDING in txt.column_names:
        taug = _matrix(full, AUGMENTED_EMBEDDING)
        if n_variants > 1:
            taug = taug.reshape(len(starts), n_variants, -1)
    else:
        warnings.append(f"{texts_dir} has no {AUGMENTED_EMBEDDING}: the augmented caption is the "
                        "caption itself, so the text intra-modal term compares each caption "
                        "with itself (the authors' defect 1); embed a text augmentation stage")
        taug = temb
    cap_ids = (txt.column("caption_id").to_pylist() if "caption_id" in txt.column_names
               else [f"{a}#{b}" for a, b in zip(t_ids, txt.column("caption_index").to_pylist())])
    rows_of: dict[str, list[int]] = {}
    for r, iid in enumerate(t_ids):
        if iid not in pos:
            raise ValueError(f"{texts_dir}: caption {cap_ids[r]!r} belongs to image {iid!r}, "
                             f"which {images_dir} does not have")
        rows_of.setdefault(iid, []).append(r)
    counts = {len(rows_of.get(i, [])) for i in image_ids}
    if len(counts) != 1 or 0 in counts:
        bad = next(i for i in image_ids if len(rows_of.get(i, [])) != max(counts) or
                   not rows_of.get(i))
        raise ValueError(f"{texts_dir}: image {bad!r} has {len(rows_of.get(bad, []))} caption(s), "
                         f"others have {max(counts)}: every image needs the same number")
    gather = np.array([rows_of[i] for i in image_ids])  # [N, C]
    f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    feats = Features(f32(clean), f32(aug), f32(temb[gather]), f32(taug[gather]),
                     torch.as_tensor(labels))
    for w in warnings:
        log.warning(w)
    return Archive(feats, image_ids, [[cap_ids[r] for r in row] for row in gather], names,
                   has_labels, {"images": str(images_dir), "texts": str(texts_dir),
                                "image_embedding": img_meta, "caption_embedding": txt_meta,
                                "image_views": aug_views, "caption_variants": n_variants},
                   warnings)
