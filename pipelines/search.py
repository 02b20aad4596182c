"""Search a trained run's hash codes with captions or images: the library behind `duchkit search`.

    search(run, text="many planes parked at the airport", k=10)          # one JSON-ready dict
    search_many(run, texts=[...]) / search_many(run, images=[...])      # one dict per query

Several queries in one call load the encoders and the model once, embed the queries in
batches and rank them in one pass over the codes; the results come per query (with --json,
one JSON object per line for --text-file or several images).

The query is embedded exactly as the run's archive was: the text encoder, pooling and
preprocessing come from the text embedding stage's manifest (run.json "inputs" names the stage
folders), an image gets the clean view of the image stage (view 0: centre crop of the same size,
resize to the encoder input, ImageNet normalisation). It is then hashed with the run's
validation-selected model and ranked against every archive item of the target modality by
Hamming distance (tie rule: equal distance -> lower archive index first; hashing.retrieval).

Two ranking paths with identical results: `numpy` (XOR + popcount on packed codes, the CPU path)
and `torch` (+-1 matmul + top-k on --device, the GPU path); `auto` takes torch on CUDA.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from duchkit.pipelines.run_folder import CODES, run_inputs
from duchkit.pipelines.stage import ConfigError


# ---------------------------------------------------------------- the run

@dataclass
class Index:
    """The codes of one modality of a run's archive."""

    packed: np.ndarray          # uint8 [N, bits/8]
    bits: int
    image_id: list
    caption_id: list
    label: list
    split: list


def load_index(run: Path, target: str) -> Index:
    from duchkit.pipelines.store import StageStore

    store = StageStore(run / CODES)
    if not store.is_complete():
        raise ConfigError(f"{run} has no {CODES}/ folder (hash codes): is it a "
                          "run folder of duchkit train?")
    t = store.read_all()
    item = "image" if target == "images" else "caption"
    keep = np.flatnonzero(np.asarray(t.column("item").to_pylist(), dtype=object) == item)
    if len(keep) == 0:
        raise ConfigError(f"{run / CODES} holds no {target}")
    t = t.take(keep)
    field = t.schema.field("code")
    packed = np.asarray(t.column("code").combine_chunks().flatten().to_numpy(),
                        np.uint8).reshape(t.num_rows, -1)
    bits = int((field.metadata or {}).get(b"bits", packed.shape[1] * 8))
    return Index(packed, bits, *(t.column(c).to_pylist() for c in
                                 ("image_id", "caption_id", "label", "split")))


def stage_manifest(folder: Path, what: str) -> dict:
    path = Path(folder) / "_manifest.json"
    if not path.is_file():
        raise ConfigError(f"the run's {what} embedding stage {folder} is gone "
                          f"(no {path}); the query must be embedded as the archive was")
    return json.loads(path.read_text())


def embedding_stage(folder: Path, what: str, kind: str, keys: tuple[str, ...]):
    """(manifest, the encoder parameters `keys`) of the run's embedding stage of `what`, which
    must be a `kind` stage: the query is embedded with the archive's own settings."""
    manifest = stage_manifest(folder, what)
    if manifest.get("kind") != kind:
        raise ConfigError(f"{folder} is a {manifest.get('kind')!r} stage, not {kind}: "
                          f"cannot tell how to embed a query {what}")
    return manifest, {k: v for k, v in manifest["parameters"].items() if k in keys}


def caption_texts(texts_dir: Path) -> dict[str, str]:
    """caption_id -> the caption (first text variant), for display; {} when not readable."""
    from duchkit.pipelines.store import StageStore

    out: dict[str, str] = {}
    store = StageStore(Path(texts_dir))
    if not store.is_complete():
        return out
    for shard in store.shard_paths():
        names = pq.read_schema(shard).names
        if "caption_id" not in names or "caption" not in names:
            return out
        t = pq.read_table(shard, columns=["caption_id", "caption"])
        for cid, text in zip(t.column("caption_id").to_pylist(), t.column("caption").to_pylist()):
            out.setdefault(cid, text)
    return out


# ---------------------------------------------------------------- the query

def embed_texts(texts: list[str], names: list[str], texts_dir: Path,
                device: str) -> np.ndarray:
    """Caption embeddings [Q, D] as the embed-texts stage made the archive's; `names` say
    where each caption came from (--text, FILE line N) for the errors."""
    from duchkit.pipelines.stages.embed import EmbedTexts

    for text, name in zip(texts, names):
        if not text.strip():
            raise ConfigError(f"{name} is empty")
    manifest, params = embedding_stage(texts_dir, "text", "embed-texts", (
        "model", "pooling", "lowercase", "strip_punctuation", "max_length"))

    def cannot_load(exc: ConfigError) -> ConfigError:
        return ConfigError(f"cannot load the query text encoder of {texts_dir}: {exc}")

    try:
        stage = EmbedTexts(**params)
    except ConfigError as exc:
        raise cannot_load(exc) from None
    clean = [stage.preprocess(text) for text in texts]
    for text, name, c in zip(texts, names, clean):  # before loading the encoder: fail fast
        if not c.strip():
            raise ConfigError(f"{name} {text!r} is empty after the archive's "
                              "preprocessing (lower-case, punctuation removed)")
    try:
        encoder = stage.encoder().to(device)
    except ConfigError as exc:
        raise cannot_load(exc) from None
    # the archive's autocast precision (fp16/bf16 on CUDA; bf16 only if asked for on the CPU)
    return encoder.encode(clean, device, precision=manifest["parameters"].get("precision",
                                                                              "auto"))


def clean_view_crop(images_dir: Path) -> int | None:
    """The crop size of view 0 as the image stage drew it (None: no crop)."""
    from duchkit.augment.view_spec import ViewSpec
    from duchkit.pipelines.store import StageStore

    for shard in StageStore(Path(images_dir)).shard_paths():
        if "view_spec" not in pq.read_schema(shard).names:
            break
        t = pq.read_table(shard, columns=["view_index", "view_spec"])
        for v, spec in zip(t.column("view_index").to_pylist(), t.column("view_spec").to_pylist()):
            if v == 0:
                crops = [op["size"] for op in ViewSpec.from_json(spec).ops if op["op"] == "crop"]
                return int(crops[0]) if crops else None
    raise ConfigError(f"{images_dir} has no view_spec of a clean view 0: "
                      "cannot tell how to crop a query image")


def clean_view(path: Path, crop: int | None, size: int) -> np.ndarray:
    """uint8 [1, S, S, 3]: decode, centre crop (the NoAugmentation view 0), resize."""
    from duchkit.augment.image_ops import apply_spec, resize
    from duchkit.augment.image_transforms import CenterCrop, Geometry
    from duchkit.augment.view_spec import ViewSpec
    from duchkit.augment.image_decode import DEFAULT_MAX_PIXELS
    from duchkit.pipelines.stages.augment_images import BadImage, read_image

    try:
        image = read_image(str(path), path.name, crop or 0, DEFAULT_MAX_PIXELS)
    except BadImage as exc:
        raise ConfigError(f"--image: {exc}") from None
    h, w = image.pixels.shape[:2]
    ops = CenterCrop(crop).draw(None, Geometry(w, h, crop)) if crop else []
    pixels = apply_spec(image.pixels, ViewSpec("CenterCrop", 0, (w, h), ops))
    return resize(pixels, size)[None]


IMAGE_BATCH = 32  # query images per forward pass: bounds the memory of a long list


def embed_images(paths: list[Path], images_dir: Path, device: str) -> np.ndarray:
    """Image embeddings [Q, D] of the clean view (view 0) as the image stage drew it."""
    import torch

    from duchkit.pipelines.stages.embed import EmbedImages

    for path in paths:
        if not path.is_file():
            raise ConfigError(f"--image {path} is not a file")
    manifest, params = embedding_stage(images_dir, "image", "embed-images",
                                       ("model", "image_arch", "input_size"))
    try:
        encoder = EmbedImages(**params).encoder().to(device)
    except ConfigError as exc:
        raise ConfigError(f"cannot load the query image encoder of "
                          f"{images_dir}: {exc}") from None
    crop = clean_view_crop(images_dir)
    out = []
    for start in range(0, len(paths), IMAGE_BATCH):
        views = np.concatenate([clean_view(p, crop, encoder.input_size)
                                for p in paths[start:start + IMAGE_BATCH]])
        out.append(encoder.encode(torch.from_numpy(views), device,
                                  manifest["parameters"].get("precision", "auto")))
    return np.concatenate(out)


def hash_query(run: Path, modality: str, embedding: np.ndarray, device: str) -> np.ndarray:
    """Packed codes [Q, bits/8] of the queries with the run's validation-selected model."""
    import torch

    from duchkit.hashing.codes import pack, to_bits
    from duchkit.hashing.train import encode, load_model

    ck = run / "checkpoint.pt"
    if not ck.is_file():
        raise ConfigError(f"{ck} is missing: is {run} a run folder of duchkit "
                          "train?")
    try:
        model, _ = load_model(ck, device)
    except ValueError as exc:  # CheckpointError: corrupted, swapped, truncated, foreign
        raise ConfigError(f"duchkit search: {exc}") from None
    net = model.image if modality == "image" else model.text
    if embedding.shape[1] != net.in_dim:
        raise ConfigError(f"the query {modality} embedding has "
                          f"{embedding.shape[1]} dims, the model of {ck} expects {net.in_dim}")
    return pack(to_bits(encode(net, torch.as_tensor(embedding, device=device))))


# ---------------------------------------------------------------- ranking

def rank_codes(query: np.ndarray, index: Index, k: int, backend: str, device: str):
    """(indices, distances) of the top k; both backends follow the same tie rule."""
    from duchkit.hashing.codes import unpack
    from duchkit.hashing.retrieval import top_k_packed, top_k_torch

    if backend == "torch":
        return top_k_torch(unpack(query, index.bits), unpack(index.packed, index.bits), k,
                           device)
    return top_k_packed(query, index.packed, k)


def read_text_file(path: Path) -> tuple[list[str], list[str]]:
    """The captions of a query file (one per line, blank lines skipped) and where each is."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"--text-file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--text-file {path} is not UTF-8 text ({exc})") from None
    picked = [(line, f"{path} line {n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not picked:
        raise ConfigError(f"--text-file {path} holds no caption")
    return [t for t, _ in picked], [w for _, w in picked]


def search_many(run: Path, texts: list[str] | None = None, images: list[Path] | None = None,
                k: int = 10, target: str | None = None, device: str = "cpu",
                backend: str = "numpy", names: list[str] | None = None) -> list[dict]:
    """Several queries of one modality: encoders and model loaded once, embeddings in batches,
    one ranking pass. Returns one JSON-ready dict per query, in order."""
    run = Path(run)
    if k < 1:
        raise ConfigError(f"--k must be >= 1, not {k}")
    modality = "text" if texts is not None else "image"
    target = target or ("images" if modality == "text" else "captions")
    inputs = run_inputs(run)
    index = load_index(run, target)
    if modality == "text":
        emb = embed_texts(texts, names or ["--text"] * len(texts), Path(inputs["texts"]), device)
    else:
        emb = embed_images([Path(p) for p in images], Path(inputs["images"]), device)
    codes = hash_query(run, modality, emb, device)
    idx, dist = rank_codes(codes, index, k, backend, device)
    captions = caption_texts(Path(inputs["texts"])) if target == "captions" else {}
    queries = [{"text": t} for t in texts] if texts is not None else \
        [{"image": str(p)} for p in images]
    return [{"run": str(run), "query": query, "target": target, "bits": index.bits, "k": k,
             "backend": backend,
             "tie_rule": "equal Hamming distance: lower archive index first",
             "code": "".join(f"{b:08b}" for b in code.tolist()),
             "results": result_rows(index, ids, ds, target, captions)}
            for query, code, ids, ds in zip(queries, codes, idx.tolist(), dist.tolist())]


def result_rows(index: Index, ids: list[int], dists: list[int], target: str,
                captions: dict[str, str]) -> list[dict]:
    rows = []
    for rank_, (i, d) in enumerate(zip(ids, dists), 1):
        row = {"rank": rank_, "distance": int(d), "image_id": index.image_id[i],
               "label": index.label[i], "split": index.split[i]}
        if target == "captions":
            row["caption_id"] = index.caption_id[i]
            row["caption"] = captions.get(index.caption_id[i])
        rows.append(row)
    return rows


def search(run: Path, text: str | None = None, image: Path | None = None, k: int = 10,
           target: str | None = None, device: str = "cpu", backend: str = "numpy") -> dict:
    """The whole query: embed, hash, rank. Returns a JSON-ready dict."""
    return search_many(run, [text] if text is not None else None,
                       [image] if text is None else None, k, target, device, backend)[0]


