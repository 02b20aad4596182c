"""Do the trainer's defaults transfer beyond the archive they were picked on? Ours against the
authors-structured loop (benchmarks/duch_train.py, as duch_quality.py --baseline runs it) on the
very same features, split and evaluation captions, in settings that differ from the reference
(full UCM, all captions, 64 bits) in one way each:

    size-50, size-33   a class-stratified half / third of the archive (fewer training pairs, a
                       smaller database: archive size is what differs between UCM and RSICD)
    half-a, half-b     class-disjoint halves of the archive (the classes split in two, fixed);
                       choose a setting on one half, report it on the other
    one-caption        trained on one caption per image (the authors' protocol), not all five
    bits-16, bits-32, bits-128   other code lengths

    python benchmarks/ucm_features.py --out FEAT        # once
    python benchmarks/transfer.py --features FEAT [--settings ref half-a ...] [--seeds 0 1 2]
        [--epochs 100] [--set KEY=VALUE ...] [--tag=-x]
    python benchmarks/transfer.py --synthetic rsicd [--noise 1.0] --settings ref bits-16 ...

`--synthetic rsicd` replaces the features with class-structured synthetic ones
(hashing.synthetic) of RSICD's size (10,921 images, 31 classes, 5 captions each, 5,460 training
pairs) and duchkit's encoder widths (EfficientNet-Lite0 1280, MiniLM 384): no archive larger
than UCM has images here, and size is the direction the defaults were never checked in. It
tests what depends on the archive's size (steps per epoch, the validation database's sample,
the decay against the gradient), not RSICD's content.

Every setting runs each seed for both trainers; the split and the evaluation caption of each
image are the seed's (data.split_indices, data.paper_caption_choice), the same for both; ours
selects its epoch on its validation slice, theirs is its final epoch, trained on the whole train
part (validation slice included), as their code does. Scored with mAP@20, class relevance,
standard AP and the authors' variant, I->T and T->I, on one caption per image (the authors'
evaluation). Per cell: ours minus theirs paired by seed, mean and standard error; a cell is
"behind" when the mean is below zero by more than two standard errors, "level" within, "ahead"
above. The verdict a default must pass: no cell behind in any setting.
`--set` (TrainConfig values, JSON) tries a candidate default on our side only. The authors' loop
results are cached in benchmarks/.cache, keyed by the rows, bits, seed, epochs and the sources.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from duchkit.hashing.codes import pack, to_bits
from duchkit.hashing.config import TrainConfig
from duchkit.hashing.data import Features, paper_caption_choice
from duchkit.hashing.evaluate import evaluate_codes
from duchkit.hashing.synthetic import class_structured
from duchkit.hashing.train import encode, train
from duchkit.pipelines.training_data import load_archive
from bench_results import parse_settings, write_result

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (bits, captions, subset)
    "ref": (64, "all", None),
    "size-50": (64, "all", ("size", 0.5)),
    "size-33": (64, "all", ("size", 1 / 3)),
    "half-a": (64, "all", ("half", 0)),
    "half-b": (64, "all", ("half", 1)),
    "one-caption": (64, "one", None),
    "bits-16": (16, "all", None),
    "bits-32": (32, "all", None),
    "bits-128": (128, "all", None),
}
VARIANTS = ("standard", "authors")
DIRECTIONS = ("i2t", "t2i")


def subset_rows(labels: np.ndarray, subset) -> np.ndarray:
    """The image rows of a setting: all, a class-stratified share, or one of two class-disjoint
    halves. Fixed (not per seed), so every seed of a setting trains on the same archive."""
    if subset is None:
        return np.arange(len(labels))
    kind, value = subset
    rng = np.random.default_rng(20261203)
    classes = np.unique(labels)
    if kind == "half":
        order = rng.permutation(classes)
        keep = order[: len(order) // 2] if value == 0 else order[len(order) // 2:]
        return np.flatnonzero(np.isin(labels, keep))
    rows = [rng.permutation(np.flatnonzero(labels == c))[: max(2, round(value * (labels == c).sum()))]
            for c in classes]
    return np.sort(np.concatenate(rows))


def take(f: Features, rows: np.ndarray) -> Features:
    r = torch.as_tensor(rows)
    return Features(f.image[r], f.image_aug[r], f.text[r], f.text_aug[r], f.labels[r])


def ours_maps(f: Features, bits: int, captions: str, seed: int, epochs: int, settings: dict
              ) -> dict:
    """Train ours as `duchkit train` does and score it on the seed's one caption per image."""
    cfg = TrainConfig(bits=bits, epochs=epochs, seed=seed, device="cpu",
                      captions_per_image=1 if captions == "one" else 0,
                      checkpoint_every=10_000, **settings).validate()
    result = train(cfg, f, log=lambda s: None)
    model = result.model.eval()
    pick = torch.as_tensor(paper_caption_choice(f.n, f.captions, seed))
    text = f.text[torch.arange(f.n), pick]
    split = np.empty(f.n, dtype=object)
    for k, v in result.splits.items():
        split[v] = k
    codes = {"image": pack(to_bits(encode(model.image, f.image))),
             "text": pack(to_bits(encode(model.text, text)))}
    keys = {"image": f.labels.numpy(), "text": f.labels.numpy()}
    out = {v: {d: round(x["map"], 4) for d, x in evaluate_codes(
        codes, keys, {"image": split, "text": split}, 20, v, (20,)).items() if d in DIRECTIONS}
        for v in VARIANTS}
    out["best_epoch"] = result.best_epoch
    return out


def theirs_maps(f: Features, rows: np.ndarray, bits: int, seed: int, epochs: int) -> dict:
    """The authors-structured loop on the same rows, cached (it does not depend on --set)."""
    from duch_baseline_real import authors_loop_maps

    h = hashlib.sha256(repr((bits, seed, epochs)).encode())
    h.update(rows.tobytes())
    h.update(f.image[:4].numpy().tobytes())
    for p in [ROOT / "benchmarks" / "duch_train.py", ROOT / "benchmarks" / "duch_baseline_real.py"]:
        h.update(p.read_bytes())
    for p in sorted((ROOT / "hashing").glob("*.py")):
        h.update(p.read_bytes())
    cache = ROOT / "benchmarks" / ".cache" / f"transfer-loop-{h.hexdigest()[:20]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    maps = authors_loop_maps(f, bits, seed, epochs)
    maps = {v: {d: maps[v][d] for d in DIRECTIONS} for v in VARIANTS}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(maps))
    return maps


def paired(ours: list[dict], theirs: list[dict]) -> dict:
    out = {}
    for v in VARIANTS:
        for d in DIRECTIONS:
            x = np.array([o[v][d] - t[v][d] for o, t in zip(ours, theirs, strict=True)])
            se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
            mean = float(x.mean())
            verdict = ("level" if not np.isfinite(se) or abs(mean) <= 2 * se
                       else "ahead" if mean > 0 else "behind")
            out.setdefault(v, {})[d] = {"diff": round(mean, 4), "se": round(se, 4),
                                        "ahead": int((x > 0).sum()), "seeds": len(x),
                                        "verdict": verdict}
    return out


def table(rows: dict) -> str:
    head = ["setting", "images", "bits", "captions"] + [
        f"{d.replace('2', '->').upper()} {v} (ours / theirs, diff)" for v in VARIANTS
        for d in DIRECTIONS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = []
        for v in VARIANTS:
            for d in DIRECTIONS:
                p = r["paired"][v][d]
                mark = {"behind": " **behind**", "ahead": " ahead", "level": ""}[p["verdict"]]
                cells.append(f"{r['ours'][v][d]:.3f} / {r['theirs'][v][d]:.3f}, "
                             f"{p['diff']:+.3f} ± {p['se']:.3f}{mark}")
        lines.append(f"| {name} | {r['images']} | {r['bits']} | {r['captions']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", type=Path, help="ucm_features.py's output folder")
    source.add_argument("--synthetic", choices=["rsicd"],
                        help="synthetic features of RSICD's size instead (see above)")
    ap.add_argument("--noise", type=float, default=1.0,
                    help="--synthetic: the spread of the images around their class centre")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a candidate default on our side (TrainConfig field, JSON value)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--resume", type=Path, metavar="LOG",
                    help="the printed output of an interrupted run (same --set): its finished "
                    "setting x seed lines are kept, only the others train")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_settings(args.set)
    TrainConfig(**settings).validate()  # a bad --set stops here, before any training
    if args.synthetic:
        full = class_structured(n_images=10_921, n_classes=31, image_dim=1280, text_dim=384,
                                captions=5, latent=32, noise=args.noise, seed=2022)
    else:
        archive = load_archive(args.features / "image_embeddings",
                               args.features / "text_embeddings")
        if not archive.has_labels:
            raise SystemExit("transfer: the features carry no class labels (class relevance "
                             "and the class-disjoint halves need them)")
        full = archive.features
    done = {}
    if args.resume:
        for line in args.resume.read_text().splitlines():
            if line.startswith('{"setting"'):
                r = json.loads(line)
                done[(r["setting"], r["seed"])] = r
    labels = full.labels.numpy()
    rows_out = {}
    for name in args.settings:
        bits, captions, subset = SETTINGS[name]
        rows = subset_rows(labels, subset)
        f = take(full, rows)
        ours, theirs = [], []
        for seed in args.seeds:
            if (name, seed) in done:
                ours.append(done[(name, seed)]["ours"])
                theirs.append(done[(name, seed)]["theirs"])
                print(json.dumps(done[(name, seed)]), flush=True)
                continue
            t0 = time.perf_counter()
            ours.append(ours_maps(f, bits, captions, seed, args.epochs, settings))
            theirs.append(theirs_maps(f, rows, bits, seed, args.epochs))
            print(json.dumps({"setting": name, "seed": seed, "ours": ours[-1],
                              "theirs": theirs[-1],
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        mean = {side: {v: {d: round(float(np.mean([s[v][d] for s in runs])), 4)
                           for d in DIRECTIONS} for v in VARIANTS}
                for side, runs in (("ours", ours), ("theirs", theirs))}
        rows_out[name] = {"images": int(len(rows)), "bits": bits, "captions": captions,
                          **mean, "paired": paired(ours, theirs),
                          "per_seed": {"ours": ours, "theirs": theirs}}
    behind = [f"{n} {v} {d}" for n, r in rows_out.items() for v in VARIANTS for d in DIRECTIONS
              if r["paired"][v][d]["verdict"] == "behind"]
    md = table(rows_out)
    print(md)
    print("cells behind:", ", ".join(behind) if behind else "none")
    result = {"bench": "transfer", "device": "cpu", "epochs": args.epochs, "seeds": args.seeds,
              "features": (f"synthetic-{args.synthetic} noise {args.noise}" if args.synthetic
                           else str(args.features)),
              "extra": args.set, "settings": rows_out, "table_md": md, "behind": behind,
              "level_or_ahead_everywhere": not behind}
    write_result(result, f"transfer{args.tag}-cpu.json")
    print(json.dumps({k: v for k, v in result.items() if k not in ("settings", "table_md")}))


if __name__ == "__main__":
    main()
