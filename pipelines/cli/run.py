"""`duchkit run`: the stages a pipeline config names (default: the embedded demo).

    duchkit run [--config FILE] [--out DIR] [--device auto|cpu|cuda] [--dry-run] [--lenient]
"""
from __future__ import annotations

import argparse

from duchkit.pipelines.cli.options import add_pipeline_options, pipeline_config
from duchkit.pipelines.version import __version__


def register(sub) -> None:
    p = sub.add_parser("run", help="run the stages a pipeline config names (default: the demo)")
    add_pipeline_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, compute nothing")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from duchkit.pipelines.runner import run_pipeline

    config = pipeline_config(args)
    if args.dry_run:
        print(f"plan for {config.run.out}:")
        for plan in run_pipeline(config, dry_run=True):
            print("  " + plan.describe())
        return 0
    manifests = run_pipeline(config, progress=not args.quiet)
    out = config.run.out
    study_report = None
    if "study" in config.extra:  # e.g. the demo ends with a short study on its embeddings
        from duchkit.pipelines.study import prepare_study
        from duchkit.pipelines.study_run import run_study

        spec = config.extra["study"].get("config", "demo")
        overrides = {"out": out, **{k: getattr(args, k, None) for k in
                                    ("device", "engine", "ray_address", "workers", "lenient")}}
        study = prepare_study(spec if spec == "demo" else config.source.parent / spec,
                              config.source, overrides)
        study_report = run_study(study, progress=not args.quiet, say=lambda s: None)["report"]
    print(f"\nduchkit {__version__}: finished; results in {out}")
    for name, m in manifests.items():
        rate = f", {m['rows_per_s']:.0f} rows/s" if m.get("rows_per_s") else ""
        reused = m.get("shards_reused")
        note = f" ({reused} shard(s) reused)" if reused else ""
        print(f"  {name:<20} {m['rows']:>7} rows in {len(m['shards'])} shard(s){rate}{note}"
              f" -> {out / name}")
    rejects = manifests.get("records", {}).get("rejects", {}).get("rows")
    if rejects:
        print(f"  {rejects} rejected dataset row(s): {out / 'records' / 'rejects.parquet'}")
    if study_report is not None:
        print(f"\n{study_report.read_text()}")
        print(f"  report: {study_report} (and {study_report.with_suffix('.html').name})")
    print(f"  log: {out / 'duchkit.log'}")
    return 0
