"""`duchkit export DIR --format captions-json|jsonl|csv`: a text stage's output as a file."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="write a text stage's output as captions JSON/JSONL/CSV")
    p.add_argument("dir", type=Path, help="a run's output folder")
    p.add_argument("--format", required=True, choices=["captions-json", "jsonl", "csv"])
    p.add_argument("--stage", action="append", help="text stage(s) to export (default: all)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: in DIR/export)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from duchkit.pipelines.export import export

    path = export(args.dir, args.format, args.stage or None, args.output)
    print(f"wrote {path}")
    return 0
