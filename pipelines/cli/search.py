"""`duchkit search`: query a trained run's hash codes with a caption or an image.

    duchkit search --run RUN --text "many planes parked at the airport" [--k 10]
    duchkit search --run RUN --image photo.tif [--target images|captions] [--json]
    duchkit search --run RUN --text-file queries.txt [--json]     # one caption per line
    duchkit search --run RUN --image a.tif b.tif c.tif

The work is duchkit.pipelines.search's; this module parses options and prints.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from duchkit.pipelines.cli.options import DEVICES, resolve_device_option


def register(sub) -> None:
    p = sub.add_parser("search", help="query a trained run's hash codes with a caption or image")
    p.add_argument("--run", type=Path, required=True, help="run folder of duchkit train")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a query caption")
    q.add_argument("--text-file", type=Path,
                   help="query captions, one per line (blank lines skipped)")
    q.add_argument("--image", type=Path, nargs="+", help="query image file(s)")
    p.add_argument("--k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--target", choices=["images", "captions"], default=None,
                   help="what to retrieve (default: the other modality)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the encoders and the model run")
    p.add_argument("--backend", choices=["auto", "numpy", "torch"], default="auto",
                   help="ranking path: numpy = packed XOR + popcount on the CPU (compiled "
                   "with numba; plain numpy where numba is missing), torch = +-1 matmul (GPU); "
                   "auto = torch on CUDA, numpy otherwise")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON (several queries: one object per line)")
    p.set_defaults(func=cmd_search)


def format_table(res: dict) -> str:
    cols = ["rank", "distance", "image_id", "label", "split"]
    if res["target"] == "captions":
        cols += ["caption_id", "caption"]
    rows = [[str(r.get(c) if r.get(c) is not None else "-") for c in cols]
            for r in res["results"]]
    widths = [max([len(c)] + [len(r[j]) for r in rows]) for j, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa
    q = res["query"]
    head = f"query {'caption ' + repr(q['text']) if 'text' in q else 'image ' + q['image']}"
    return "\n".join([f"{head} -> top {len(rows)} {res['target']} of {res['run']} "
                      f"({res['bits']} bits, Hamming distance)", line(cols),
                      line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_search(args: argparse.Namespace) -> int:
    from duchkit.pipelines.search import read_text_file, search_many

    device = resolve_device_option(args.device, "search")
    backend = args.backend
    if backend == "auto":
        backend = "torch" if device == "cuda" else "numpy"
    if args.text is not None:
        texts, names = [args.text], ["--text"]
    elif args.text_file is not None:
        texts, names = read_text_file(args.text_file)
    else:
        texts, names = None, None
    results = search_many(args.run, texts, args.image, args.k, args.target, device, backend,
                          names)
    if args.json and (args.text_file is not None or len(args.image or []) > 1):
        print("\n".join(json.dumps(r) for r in results))  # JSON lines, however many queries
    elif args.json:
        print(json.dumps(results[0], indent=2))
    else:
        print("\n\n".join(format_table(r) for r in results))
    return 0
