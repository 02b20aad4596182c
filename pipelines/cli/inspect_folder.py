"""`duchkit inspect DIR [--html [FILE]]`: shards, rows, schema and manifest summary of an output
folder; with --html also one self-contained page with the galleries of what it holds (captions
and their variants, image views, retrieval of a run folder)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("inspect", help="shards, rows, schema and manifest summary of a folder "
                       "(--html: and a page of captions, image views and retrieval examples)")
    p.add_argument("dir", type=Path)
    p.add_argument("--html", nargs="?", const="", metavar="FILE",
                   help="also write the galleries as one self-contained HTML page (default: "
                   "DIR/inspect.html)")
    p.add_argument("--suspicious", type=int, metavar="N",
                   help="a robust run folder: its N least trusted training pairs (image, "
                   "captions, weight) to suspicious.html and suspicious.parquet")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from duchkit.pipelines.describe import describe, write_html

    if args.suspicious is not None:
        from duchkit.pipelines.suspicious import suspicious_pairs, write_suspicious

        parquet, page = write_suspicious(args.dir, args.suspicious)
        print("rank  weight  disagreement  image  first caption")
        for i, r in enumerate(suspicious_pairs(args.dir, args.suspicious), 1):
            caption = (r["captions"] or ["-"])[0]
            d = r.get("disagreement")
            print(f"{i:>3}  {r['weight']:.3f}  {'-' if d is None else f'{d:.3f}':>5}  "
                  f"{r['image_id']:<24} {caption}")
        print(f"wrote {page} and {parquet}")
        return 0
    text = describe(args.dir)
    print(text)
    if args.html is not None:
        path = write_html(args.dir, Path(args.html) if args.html else None, text)
        print(f"galleries: {path}")
    return 0
