"""`duchkit study --config NAME|FILE`: the augmentation comparison study.

    duchkit study --config table2-offline [--dataset my.toml] [--seeds 0,1,2] [--dry-run]
                  [--protocol duchkit|paper] [--set SECTION.KEY=VALUE ...]

Exit status 1 when a cell failed (the report names it and why; the other cells ran).

A grid of augmentation variants, DUCH trained per cell and seed, and a report; the work is
duchkit.pipelines.study's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from duchkit.pipelines.cli.options import DEVICES
from duchkit.pipelines.stage import ConfigError


def register(sub) -> None:
    from duchkit.pipelines.study import BUILTIN_STUDIES, PROTOCOLS

    p = sub.add_parser("study", help="the augmentation comparison study: a grid of variants, "
                       "DUCH per cell and seed, a report")
    p.add_argument("--config", required=True,
                   help=f"study config file, or a built-in study: {', '.join(BUILTIN_STUDIES)}")
    p.add_argument("--dataset", type=Path, help="take [dataset] and [run] from this pipeline "
                   "config, and its stages' settings (models, thresholds) as the defaults of "
                   "the study's variants of the same kinds (printed: what is used, ignored)")
    p.add_argument("--out", type=Path, help="output folder (default: ./duchkit-out)")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--seeds", help="comma-separated seeds, replacing [study] seeds "
                   "(runs already done are reused)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="duchkit: duchkit's training and "
                   "evaluation (all captions, beta/gamma scaled by 64/K); paper: as the paper's "
                   "figures were made (one caption per image, constant beta/gamma, the "
                   "one-caption evaluation), in study/<name>-paper/. Default: [study] protocol, "
                   "else duchkit")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change one value of the study file (TOML value; repeatable), e.g. "
                   "study.workers=2, embed.runtime=openvino, train.amp=true")
    p.add_argument("--dry-run", action="store_true", help="list the stages and cells")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 0,1,2") from None


def cmd_study(args: argparse.Namespace) -> int:
    from duchkit.pipelines.study import PROTOCOL_TEXT, prepare_study
    from duchkit.pipelines.study_run import run_study

    overrides = {"out": args.out, "device": args.device}
    study = prepare_study(args.config, args.dataset, overrides, parse_seeds(args.seeds),
                          args.protocol, args.set)
    for note in study.notes:  # what --dataset carried into the variants, and what it ignored
        print(note)
    if args.dry_run:
        print(f"study {study.name}: {len(study.cells)} cell(s) x seeds {study.seeds}")
        print(f"  protocol {study.protocol}: {PROTOCOL_TEXT[study.protocol]}")
        for e in study.pipeline.stages:
            print(f"  stage {e.name:<32} {e.stage.kind} <- {e.input}")
        for c in study.cells:
            print(f"  cell  {c.id} {c.group:>6} {c.label}: {c.image_stage} + {c.text_stage}")
        return 0
    result = run_study(study, progress=not args.quiet,
                       say=(lambda s: None) if args.quiet else print)
    print(result["report"].read_text())
    print(f"report: {result['report']} (and {result['report'].with_suffix('.html').name})")
    if result["failed"]:  # the other cells ran; the exit status still says not all did
        print(f"{len(result['failed'])} cell(s) failed: see 'Failed cells' in the report")
        return 1
    return 0
