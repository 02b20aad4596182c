"""`duchkit inspect DIR`: shards, rows, schema and manifest summary of an output folder."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("inspect", help="shards, rows, schema and manifest summary of a folder")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from duchkit.pipelines.describe import describe

    print(describe(args.dir))
    return 0
