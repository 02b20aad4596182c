"""`duchkit run`: the stages a pipeline config names (default: the embedded demo).

    duchkit run [--config FILE] [--out DIR] [--device auto|cpu|cuda] [--dry-run] [--lenient]
"""
from __future__ import annotations

import argparse

from duchkit.pipelines.cli.options import add_pipeline_options, pipeline_config
from duchkit.pipelines.config import demo_config_path
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
    galleries = None
    if config.source is not None and config.source.resolve() == demo_config_path().resolve():
        from duchkit.pipelines.describe import write_html

        # the demo's captions and their back-translations, its image views: one page to look at
        galleries = write_html(out, runs=False)
    study_report = None
    study_failed = {}
    if "study" in config.extra:  # e.g. the demo ends with a short study
        from duchkit.pipelines.config import read_config_file
        from duchkit.pipelines.study import BUILTIN_STUDIES, builtin_study_path, prepare_study
        from duchkit.pipelines.study_run import run_study

        section = config.extra["study"]
        spec = section.get("config", "demo")
        path = builtin_study_path(spec) if spec in BUILTIN_STUDIES else config.source.parent / spec
        # a study with its own [dataset] runs in its own folder (one dataset per folder); one
        # without runs on this pipeline's dataset and stages, in this folder
        own = "dataset" in read_config_file(path)
        study_out = out / section["out"] if section.get("out") else out
        overrides = {"out": study_out,
                     **{k: getattr(args, k, None) for k in
                        ("device", "engine", "ray_address", "workers", "lenient")}}
        study = prepare_study(path, None if own else config.source, overrides)
        say = (lambda s: None) if args.quiet else print
        if not args.quiet:
            print(f"\nstudy {study.name}: {len(study.cells)} cell(s) x {len(study.seeds)} "
                  f"seed(s) on {study.pipeline.dataset.name}, in {study_out}")
        result = run_study(study, progress=not args.quiet, say=say)
        study_report, study_failed = result["report"], result["failed"]
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
        print(f"  report: {study_report} (and {study_report.with_suffix('.html').name}: "
              "tables, plots, captions, image views, retrieval examples)")
    if galleries is not None:
        print(f"  captions, their back-translations and image views: {galleries}")
    print(f"  log: {out / 'duchkit.log'}")
    if study_failed:
        print(f"  {len(study_failed)} study cell(s) failed: see 'Failed cells' in the report")
        return 1
    return 0
