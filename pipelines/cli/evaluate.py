"""`duchkit evaluate --run RUN`: mAP@K and P@K of a trained run's codes.

    duchkit evaluate --run RUN [--map-variant standard|ir|authors] [--k 20] [--relevance class|pair]
                     [--captions all|one]

The work is duchkit.pipelines.evaluation.evaluate_run's.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    from duchkit.hashing.config import MAP_VARIANTS, TrainConfig

    p = sub.add_parser("evaluate", help="hash codes and retrieval metrics of a trained run")
    p.add_argument("--run", type=Path, required=True, help="run folder of duchkit train")
    p.add_argument("--map-variant", choices=MAP_VARIANTS, default="standard",
                   help="standard: AP over the relevant hits of the top K (the hashing "
                   "literature's); ir: AP over min(K, R); authors: their non-standard mAP, only "
                   "to compare with published figures")
    p.add_argument("--k", type=int, default=TrainConfig().map_k, help="K of mAP@K")
    p.add_argument("--relevance", choices=["class", "pair"], default="class",
                   help="class: same class label; pair: caption and image of the same pair")
    p.add_argument("--captions", choices=["all", "one"], default="all",
                   help="all: every caption the run coded; one: the paper's protocol, one "
                   "seeded caption per image (the draw --captions-per-image 1 trains on), so a "
                   "run trained on all captions is scored as published figures are")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from duchkit.pipelines.evaluation import evaluate_run

    evaluate_run(args.run, args.map_variant, args.k, args.relevance, captions=args.captions)
    return 0
