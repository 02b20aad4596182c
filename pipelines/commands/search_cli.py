"""`duchkit search`: query a trained run's hash codes with a caption or an image.

    duchkit search --run RUN --text "many planes parked at the airport" [--k 10]
    duchkit search --run RUN --image photo.tif [--target images|captions] [--json]

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

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.stage import ConfigError

CODES = "codes"


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="query a trained run's hash codes with a caption or image")
    p.add_argument("--run", type=Path, required=True, help="run folder of duchkit train")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a query caption")
    q.add_argument("--image", type=Path, help="a query image file")
    p.add_argument("--k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--target", choices=["images", "captions"], default=None,
                   help="what to retrieve (default: the other modality)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the encoders and the model run")
    p.add_argument("--backend", choices=["auto", "numpy", "torch"], default="auto",
                   help="ranking path: numpy = packed XOR + popcount on the CPU (compiled "
                   "with numba; plain numpy where numba is missing), torch = +-1 matmul (GPU); "
                   "auto = torch on CUDA, numpy otherwise")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_search)


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
    from pipelines.store import StageStore

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


def run_inputs(run: Path) -> dict:
    path = run / "run.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: is {run} a run folder of "
                          "duchkit train?")
    return json.loads(path.read_text())["inputs"]


def stage_manifest(folder: Path, what: str) -> dict:
    path = Path(folder) / "_manifest.json"
    if not path.is_file():
        raise ConfigError(f"the run's {what} embedding stage {folder} is gone "
                          f"(no {path}); the query must be embedded as the archive was")
    return json.loads(path.read_text())


def caption_texts(texts_dir: Path) -> dict[str, str]:
    """caption_id -> the caption (first text variant), for display; {} when not readable."""
    from pipelines.store import StageStore

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

def embed_text(text: str, texts_dir: Path, device: str) -> np.ndarray:
    """The caption embedding as the embed-texts stage made the archive's."""
    from pipelines.stages.embed import EmbedTexts

    if not text.strip():
        raise ConfigError("--text is empty")
    manifest = stage_manifest(texts_dir, "text")
    if manifest.get("kind") != "embed-texts":
        raise ConfigError(f"{texts_dir} is a {manifest.get('kind')!r} stage, "
                          "not embed-texts: cannot tell how to embed a query caption")
    params = {k: v for k, v in manifest["parameters"].items()
              if k in ("model", "pooling", "lowercase", "strip_punctuation", "max_length")}
    try:
        stage = EmbedTexts(**params)
        encoder = stage.encoder().to(device)
    except ConfigError as exc:
        raise ConfigError(f"cannot load the query text encoder of {texts_dir}: "
                          f"{exc}") from None
    clean = stage.preprocess(text)
    if not clean.strip():
        raise ConfigError(f"--text {text!r} is empty after the archive's "
                          "preprocessing (lower-case, punctuation removed)")
    # the archive's autocast precision (fp16/bf16 on CUDA; bf16 only if asked for on the CPU)
    return encoder.encode([clean], device, precision=manifest["parameters"].get("precision",
                                                                                 "auto"))


def clean_view_crop(images_dir: Path) -> int | None:
    """The crop size of view 0 as the image stage drew it (None: no crop)."""
    from augment.image_views import ViewSpec
    from pipelines.store import StageStore

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
    from augment.image_views import CenterCrop, Geometry, apply_spec, ViewSpec, resize
    from pipelines.stages.augment_images import BadImage, read_image

    try:
        image = read_image(str(path), path.name, crop or 0)
    except BadImage as exc:
        raise ConfigError(f"--image: {exc}") from None
    h, w = image.pixels.shape[:2]
    ops = CenterCrop(crop).draw(None, Geometry(w, h, crop)) if crop else []
    pixels = apply_spec(image.pixels, ViewSpec("NoAugmentation", 0, (w, h), ops))
    return resize(pixels, size)[None]


def embed_image(path: Path, images_dir: Path, device: str) -> np.ndarray:
    import torch

    from pipelines.stages.embed import EmbedImages

    if not path.is_file():
        raise ConfigError(f"--image {path} is not a file")
    manifest = stage_manifest(images_dir, "image")
    if manifest.get("kind") != "embed-images":
        raise ConfigError(f"{images_dir} is a {manifest.get('kind')!r} stage, "
                          "not embed-images: cannot tell how to embed a query image")
    params = {k: v for k, v in manifest["parameters"].items()
              if k in ("model", "image_arch", "input_size")}
    try:
        encoder = EmbedImages(**params).encoder().to(device)
    except ConfigError as exc:
        raise ConfigError(f"cannot load the query image encoder of "
                          f"{images_dir}: {exc}") from None
    view = clean_view(path, clean_view_crop(images_dir), encoder.input_size)
    return encoder.encode(torch.from_numpy(np.ascontiguousarray(view)), device,
                          manifest["parameters"].get("precision", "auto"))


def hash_query(run: Path, modality: str, embedding: np.ndarray, device: str) -> np.ndarray:
    """Packed code [1, bits/8] of the query with the run's validation-selected model."""
    import torch

    from hashing.codes import pack, to_bits
    from hashing.train import encode, load_model

    ck = run / "checkpoint.pt"
    if not ck.is_file():
        raise ConfigError(f"{ck} is missing: is {run} a run folder of duchkit "
                          "train?")
    model, _ = load_model(ck, device)
    net = model.image if modality == "image" else model.text
    if embedding.shape[1] != net.in_dim:
        raise ConfigError(f"the query {modality} embedding has "
                          f"{embedding.shape[1]} dims, the model of {ck} expects {net.in_dim}")
    return pack(to_bits(encode(net, torch.as_tensor(embedding, device=device))))


# ---------------------------------------------------------------- ranking

def rank_codes(query: np.ndarray, index: Index, k: int, backend: str, device: str):
    """(indices, distances) of the top k; both backends follow the same tie rule."""
    from hashing.codes import unpack
    from hashing.retrieval import top_k_packed, top_k_torch

    if backend == "torch":
        return top_k_torch(unpack(query, index.bits), unpack(index.packed, index.bits), k,
                           device)
    return top_k_packed(query, index.packed, k)


def search(run: Path, text: str | None = None, image: Path | None = None, k: int = 10,
           target: str | None = None, device: str = "cpu", backend: str = "numpy") -> dict:
    """The whole query: embed, hash, rank. Returns a JSON-ready dict."""
    run = Path(run)
    if k < 1:
        raise ConfigError(f"--k must be >= 1, not {k}")
    modality = "text" if text is not None else "image"
    target = target or ("images" if modality == "text" else "captions")
    inputs = run_inputs(run)
    index = load_index(run, target)
    if modality == "text":
        emb = embed_text(text, Path(inputs["texts"]), device)
    else:
        emb = embed_image(Path(image), Path(inputs["images"]), device)
    code = hash_query(run, modality, emb, device)
    idx, dist = rank_codes(code, index, k, backend, device)
    texts = caption_texts(Path(inputs["texts"])) if target == "captions" else {}
    results = []
    for rank_, (i, d) in enumerate(zip(idx[0].tolist(), dist[0].tolist()), 1):
        row = {"rank": rank_, "distance": int(d), "image_id": index.image_id[i],
               "label": index.label[i], "split": index.split[i]}
        if target == "captions":
            row["caption_id"] = index.caption_id[i]
            row["caption"] = texts.get(index.caption_id[i])
        results.append(row)
    return {"run": str(run), "query": {"text": text} if text is not None else
            {"image": str(image)}, "target": target, "bits": index.bits, "k": k,
            "backend": backend, "tie_rule": "equal Hamming distance: lower archive index first",
            "code": "".join(f"{b:08b}" for b in code[0].tolist()), "results": results}


def format_table(res: dict) -> str:
    cols = ["rank", "distance", "image_id", "label", "split"]
    if res["target"] == "captions":
        cols += ["caption_id", "caption"]
    rows = [[str(r.get(c) if r.get(c) is not None else "-") for c in cols]
            for r in res["results"]]
    widths = [max([len(c)] + [len(r[j]) for r in rows]) for j, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa
    q = res["query"]
    head = f"query {'caption ' + repr(q['text']) if 'text' in q else 'image ' + q['image']}"
    return "\n".join([f"{head} -> top {len(rows)} {res['target']} of {res['run']} "
                      f"({res['bits']} bits, Hamming distance)", line(cols),
                      line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_search(args: argparse.Namespace) -> int:
    from pipelines.runner import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise ConfigError(f"--device: {exc}") from None
    backend = args.backend
    if backend == "auto":
        backend = "torch" if device == "cuda" else "numpy"
    res = search(args.run, args.text, args.image, args.k, args.target, device, backend)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
