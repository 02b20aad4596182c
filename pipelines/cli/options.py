"""Options several commands share, and how they become library arguments."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from duchkit.pipelines.stage import ConfigError

DEVICES = ["auto", "cpu", "cuda"]


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs pipeline stages (run and the stage commands)."""
    p.add_argument("--config", type=Path, help="pipeline config (TOML or YAML); default: the "
                   "embedded UCM demo")
    p.add_argument("--out", type=Path, help="output folder (default: [run] out, else ./duchkit-out)")
    p.add_argument("--device", choices=DEVICES, help="default: [run] device, auto")
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


def pipeline_config(args: argparse.Namespace):
    """The pipeline config of --config (default: the demo) with the command-line overrides."""
    from duchkit.pipelines.config import demo_config_path, load_config

    overrides = {k: getattr(args, k, None) for k in
                 ("out", "device", "seed", "workers", "shard_rows", "lenient", "engine",
                  "ray_address")}
    return load_config(args.config or demo_config_path(), overrides)


def run_stage_command(args: argparse.Namespace, kind: str, name: str, values: dict,
                      input_name: str | None = None, reuse_folder: bool = False) -> dict:
    """A stage command (augment-text, augment-images, embed): one stage of the config's
    dataset into `<out>/<name>`, as `duchkit run` would write it."""
    from duchkit.pipelines.runner import run_single_stage

    return run_single_stage(pipeline_config(args), kind, name, values, input_name,
                            f"duchkit {args.command}", reuse_folder,
                            progress=not getattr(args, "quiet", False))


def resolve_device_option(value: str, command: str) -> str:
    from duchkit.pipelines.runner import resolve_device

    try:
        return resolve_device(value)
    except RuntimeError as exc:
        raise ConfigError(f"duchkit {command}: --device: {exc}") from None


def stage_default(stage_class, name: str):
    """A stage parameter's default, from the stage dataclass (never a copy in argparse)."""
    f = {f.name: f for f in dataclasses.fields(stage_class)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def print_stage(name: str, manifest: dict) -> int:
    rate = f", {manifest['rows_per_s']:.0f} rows/s" if manifest.get("rows_per_s") else ""
    print(f"{name}: {manifest['rows']} rows in {len(manifest['shards'])} shard(s){rate}")
    return 0
