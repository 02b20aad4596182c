"""The `duchkit` command line.

    duchkit run [--config FILE] [--out DIR] [--device auto|cpu|cuda] [--dry-run] [--lenient]
    duchkit inspect DIR
    duchkit export DIR --format captions-json|jsonl|csv [--stage NAME ...] [-o FILE]
    duchkit augment-text | augment-images | embed | train | evaluate | study | search ...

Every error a user can cause (bad config, bad dataset, missing model) ends with a one-paragraph
message and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Callable

from duchkit.pipelines.commands import backtranslation_cli, rule_cli
from duchkit.pipelines.engines import EngineUnavailable
from duchkit.pipelines.readers import DatasetError
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.version import __version__

EXIT_USAGE = 2


def demo_config_path() -> Path:
    return Path(str(resources.files("duchkit.pipelines") / "demo" / "demo.toml"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="pipeline config (TOML or YAML); default: the "
                   "embedded UCM demo")
    p.add_argument("--out", type=Path, help="output folder (default: [run] out, else ./duchkit-out)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: [run] device, auto")
    p.add_argument("--seed", type=int, help="run seed (default: [run] seed)")
    p.add_argument("--workers", type=int, help="worker processes for CPU stages")
    p.add_argument("--shard-rows", type=int, dest="shard_rows", help="rows per shard (default 10000)")
    p.add_argument("--lenient", action="store_true", default=None,
                   help="write bad dataset rows to rejects.parquet and go on, instead of stopping")
    p.add_argument("--engine", choices=["local", "ray"],
                   help="local process pool (default) or Ray Data (pip install 'duchkit[ray]')")
    p.add_argument("--ray-address", dest="ray_address",
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load(args: argparse.Namespace):
    from duchkit.pipelines.config import load_config

    overrides = {k: getattr(args, k, None) for k in
                 ("out", "device", "seed", "workers", "shard_rows", "lenient", "engine",
                  "ray_address")}
    return load_config(args.config or demo_config_path(), overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from duchkit.pipelines.runner import run_pipeline

    config = load(args)
    if args.dry_run:
        print(f"plan for {config.run.out}:")
        for plan in run_pipeline(config, dry_run=True):
            print("  " + plan.describe())
        return 0
    manifests = run_pipeline(config, progress=not args.quiet)
    out = config.run.out
    study_report = None
    if "study" in config.extra:  # e.g. the demo ends with a short study on its embeddings
        from duchkit.pipelines.study import run_study

        spec = config.extra["study"].get("config", "demo")
        study = _study(spec if spec == "demo" else config.source.parent / spec, args, out,
                       dataset_from=config.source)
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from duchkit.pipelines.inspect import describe

    print(describe(args.dir))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from duchkit.pipelines.export import export

    path = export(args.dir, args.format, args.stage or None, args.output)
    print(f"wrote {path}")
    return 0


def run_one_stage(args: argparse.Namespace, kind: str, name: str, values: dict,
                  input_name: str | None = None, prior: Callable | None = None) -> dict:
    """Run one stage (and whatever its input needs) on the dataset of --config or the demo.

    The stage subcommands (augment-text, augment-images, embed) are thin wrappers over this:
    the stage lands in `<out>/<name>` exactly as it would inside `duchkit run`. `prior(out,
    names)` may add stages an earlier subcommand wrote into the output folder."""
    from duchkit.pipelines.config import StageEntry
    from duchkit.pipelines.runner import run_pipeline
    from duchkit.pipelines.stages import stage_class

    config = load(args)
    where = f"duchkit {args.command}"
    stage = stage_class(kind, where).from_config(values, where)
    input_name = input_name or "records"
    needed, wanted = [], input_name
    by_name = {e.name: e for e in config.stages}
    if prior is not None and input_name not in by_name:
        by_name.update({e.name: e for e in prior(config.run.out, set(by_name) | {name})})
    while wanted in by_name:  # the chain of configured stages that produce the input
        needed.insert(0, by_name[wanted])
        wanted = by_name[wanted].input
    if wanted != "records":
        raise ConfigError(f"{where}: --input {input_name!r} is not a stage of the config")
    config.stages = [e for e in needed if e.name != name] + [StageEntry(name, stage, input_name)]
    return run_pipeline(config, progress=not getattr(args, "quiet", False))[name]


def cmd_augment_text(args: argparse.Namespace) -> int:
    if args.method == "backtranslation":
        name = args.name or backtranslation_cli.default_name(args)
        m = run_one_stage(args, backtranslation_cli.KIND, name,
                          backtranslation_cli.to_stage_values(args), args.input)
    else:
        name = args.name or rule_cli.default_name(args)
        m = run_one_stage(args, rule_cli.KIND, name,
                          rule_cli.to_stage_values(args, load(args).stages), args.input)
    print(f"duchkit augment-text: {m['rows']} rows in {len(m['shards'])} shard(s) -> "
          f"{load(args).run.out / name}")
    if m.get("summary", {}).get("reasons"):
        print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in m["summary"]["reasons"].items()))
    return 0


def _study(name_or_path: str | Path, args: argparse.Namespace, out: Path | None,
           dataset_from: Path | None = None):
    from duchkit.pipelines.study import BUILTIN_STUDIES, builtin_study_path, load_study

    path = (builtin_study_path(str(name_or_path)) if str(name_or_path) in BUILTIN_STUDIES
            else Path(name_or_path))
    overrides = {"out": out, **{k: getattr(args, k, None) for k in
                                ("device", "engine", "ray_address", "workers", "lenient")}}
    study = load_study(path, dataset_from or getattr(args, "dataset", None), overrides)
    if getattr(args, "seeds", None):
        try:
            study.seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: expected integers like 0,1,2") from None
    return study


def cmd_study(args: argparse.Namespace) -> int:
    from duchkit.pipelines.study import run_study

    study = _study(args.config, args, args.out)
    if args.dry_run:
        print(f"study {study.name}: {len(study.cells)} cell(s) x seeds {study.seeds}")
        for e in study.pipeline.stages:
            print(f"  stage {e.name:<32} {e.stage.kind} <- {e.input}")
        for c in study.cells:
            print(f"  cell  {c.id} {c.group:>6} {c.label}: {c.image_stage} + {c.text_stage}")
        return 0
    result = run_study(study, progress=not args.quiet,
                       say=(lambda s: None) if args.quiet else print)
    print(result["report"].read_text())
    print(f"report: {result['report']} (and {result['report'].with_suffix('.html').name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duchkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"duchkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the stages a pipeline config names (default: the demo)")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, compute nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="shards, rows, schema and manifest summary of a folder")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("export", help="write a text stage's output as captions JSON/JSONL/CSV")
    p.add_argument("dir", type=Path, help="a run's output folder")
    p.add_argument("--format", required=True, choices=["captions-json", "jsonl", "csv"])
    p.add_argument("--stage", action="append", help="text stage(s) to export (default: all)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: in DIR/export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("augment-text", help="caption augmentation (rule-based, back-translation)")
    _common(p)
    p.add_argument("--method", required=True, choices=["rule", "backtranslation"])
    p.add_argument("--name", help="output stage name (default: the method's)")
    p.add_argument("--input", help="input stage (default: records)")
    backtranslation_cli.add_arguments(p)
    rule_cli.add_arguments(p)
    p.set_defaults(func=cmd_augment_text)

    from duchkit.pipelines.cli_embed import add_commands as add_image_and_embed_commands

    add_image_and_embed_commands(sub, _common, run_one_stage)
    from duchkit.pipelines.study import BUILTIN_STUDIES

    p = sub.add_parser("study", help="the augmentation comparison study: a grid of variants, "
                       "DUCH per cell and seed, a report")
    p.add_argument("--config", required=True,
                   help=f"study config file, or a built-in study: {', '.join(BUILTIN_STUDIES)}")
    p.add_argument("--dataset", type=Path, help="take [dataset] from this pipeline config")
    p.add_argument("--out", type=Path, help="output folder (default: ./duchkit-out)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seeds", help="comma-separated seeds, replacing [study] seeds "
                   "(runs already done are reused)")
    p.add_argument("--dry-run", action="store_true", help="list the stages and cells")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    from duchkit.pipelines.commands.search_cli import add_parser as add_search_parser
    from duchkit.pipelines.commands.train_cli import add_parsers as add_train_parsers

    add_train_parsers(sub)  # train, evaluate
    add_search_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `duchkit` alone runs the demo: the one thing a newcomer wants to see work.
    args = build_parser().parse_args(argv or ["run"])
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ConfigError, DatasetError, FileNotFoundError, EngineUnavailable) as exc:
        print(f"duchkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
