"""DUCH when some captions belong to the wrong image: plain DUCH against the robust modes, on real
UCM features, the CHNR protocol (wrong captions injected into the training images only; query
and retrieval clean), 64 bits, mAP@20 of the epoch the (noisy) validation slice selects.

    python benchmarks/ucm_features.py --out FEAT        # once
    python benchmarks/noise_robustness.py --features FEAT [--rates 0 0.3 0.5] [--seeds 0 1 2]
        [--modes none chnr gmm oracle] [--epochs 100] [--meta-epochs 75] [--set amp=true]

Per rate and mode: mean and standard error over seeds of I->T and T->I (standard and the
authors' variant), the weights' ROC-AUC against the true noise mask, and the phase-2 training
time against plain DUCH's. The bars it checks: at the highest rate the best robust mode keeps
I->T and T->I within .05 of its own rate-0 score; at every rate >= 0.3 it beats plain DUCH by
more than 2 standard errors (paired by seed); the label-free gmm is within .02 of chnr or
better; phase 2 costs <= 1.2x plain DUCH.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from duchkit.hashing.codes import pack, to_bits
from duchkit.hashing.config import TrainConfig
from duchkit.hashing.evaluate import evaluate_codes
from duchkit.hashing.train import encode, train
from duchkit.pipelines.training_data import load_archive
from bench_results import parse_settings, write_result


def query_retrieval_maps(result, feats) -> dict:
    """mAP@20 on the clean query/retrieval split, every caption of an image in the text side."""
    split = np.empty(feats.n, dtype=object)
    for k, v in result.splits.items():
        split[v] = k
    c = feats.captions
    model = result.model.eval()
    codes = {"image": pack(to_bits(encode(model.image, feats.image))),
             "text": pack(to_bits(encode(model.text, feats.text.reshape(-1, feats.text_dim))))}
    labels = feats.labels.numpy()
    keys = {"image": labels, "text": np.repeat(labels, c)}
    splits = {"image": split, "text": np.repeat(split, c)}
    out = {}
    for variant in ("standard", "authors"):
        res = evaluate_codes(codes, keys, splits, 20, variant, (20,))
        out[variant] = {d: round(res[d]["map"], 4) for d in ("i2t", "t2i")}
    return out


def summary(values: list[float]) -> dict:
    a = np.asarray(values, float)
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return {"mean": round(float(a.mean()), 4), "se": round(se, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=["none", "chnr", "gmm", "oracle"])
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--meta-epochs", type=int, default=75)
    ap.add_argument("--clean-fraction", type=float, default=0.3)
    ap.add_argument("--weight-mode", default="exp")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another TrainConfig value (JSON), e.g. amp=true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--resume", type=Path, metavar="LOG",
                    help="the printed output of an interrupted run: its finished runs (one JSON "
                    "line each) are kept, only the others train")
    args = ap.parse_args()
    feats = load_archive(args.features / "image_embeddings",
                         args.features / "text_embeddings").features
    extra = parse_settings(args.set)
    base = TrainConfig(bits=args.bits, epochs=args.epochs, meta_epochs=args.meta_epochs,
                       clean_fraction=args.clean_fraction, weight_mode=args.weight_mode,
                       checkpoint_every=10_000, **extra)
    runs = []
    done = {}
    if args.resume:
        for line in args.resume.read_text().splitlines():
            if line.startswith('{"rate"'):
                r = json.loads(line)
                done[(r["rate"], r["mode"], r["seed"])] = r
    for rate in args.rates:
        for mode in args.modes:
            if mode == "oracle" and rate == 0:
                continue  # no noise, nothing for the oracle to know
            for seed in args.seeds:
                if (rate, mode, seed) in done:
                    runs.append(done[(rate, mode, seed)])
                    print(json.dumps(runs[-1]), flush=True)
                    continue
                cfg = dataclasses.replace(base, seed=seed, noise_rate=rate, robust=mode)
                t0 = time.perf_counter()
                result = train(cfg, feats, log=lambda s: None)
                seconds = time.perf_counter() - t0
                main_epochs = [r for r in result.history if r.get("phase", "main") == "main"]
                maps = query_retrieval_maps(result, feats)
                row = {"rate": rate, "mode": mode, "seed": seed, "maps": maps,
                       "seconds": round(seconds, 2), "best_epoch": result.best_epoch,
                       "weight_auc": main_epochs[-1].get("weight_auc") if main_epochs else None,
                       "noisy_below_threshold": (main_epochs[-1].get("noisy_below_threshold")
                                                 if main_epochs else None),
                       # phase 2 = the main epochs (chnr: after its meta epochs), timed
                       "phase2_seconds": round(sum(
                           s for e, s in result.epoch_seconds.items()
                           if e >= (cfg.meta_epochs if mode in ("chnr", "ptc") else 0)), 2)}
                runs.append(row)
                print(json.dumps(row), flush=True)

    def cell(rate, mode):
        return [r for r in runs if r["rate"] == rate and r["mode"] == mode]

    table = {}
    for rate in args.rates:
        for mode in args.modes:
            rs = cell(rate, mode)
            if not rs:
                continue
            entry = {v: {d: summary([r["maps"][v][d] for r in rs]) for d in ("i2t", "t2i")}
                     for v in ("standard", "authors")}
            aucs = [r["weight_auc"] for r in rs if r["weight_auc"] is not None]
            entry["weight_auc"] = summary(aucs) if aucs else None
            entry["phase2_seconds"] = summary([r["phase2_seconds"] for r in rs])
            plain = cell(rate, "none")
            if mode != "none" and plain:
                paired = {d: [a["maps"]["authors"][d] - b["maps"]["authors"][d]
                              for a, b in zip(sorted(rs, key=lambda r: r["seed"]),
                                              sorted(plain, key=lambda r: r["seed"]))]
                          for d in ("i2t", "t2i")}
                entry["minus_plain_authors"] = {d: summary(v) for d, v in paired.items()}
                entry["time_ratio_vs_plain"] = round(
                    np.median([r["phase2_seconds"] for r in rs])
                    / np.median([r["phase2_seconds"] for r in plain]), 3)
            table[f"{rate}/{mode}"] = entry
    lines = ["| noise | mode | I->T authors | T->I authors | I->T std | T->I std | weight AUC "
             "| minus plain, authors (I->T / T->I) | phase-2 time / plain |", "|" + "---|" * 9]

    def ms(x: dict) -> str:
        return f"{x['mean']:.3f} ± {x['se']:.3f}"

    for key, e in table.items():
        rate, mode = key.split("/")
        m = e.get("minus_plain_authors")
        minus = f"{m['i2t']['mean']:+.3f} ± {m['i2t']['se']:.3f} / " \
                f"{m['t2i']['mean']:+.3f} ± {m['t2i']['se']:.3f}" if m else "-"
        auc = f"{e['weight_auc']['mean']:.3f}" if e["weight_auc"] else "-"
        lines.append(f"| {rate} | {mode} | {ms(e['authors']['i2t'])} | {ms(e['authors']['t2i'])} "
                     f"| {e['standard']['i2t']['mean']:.3f} | {e['standard']['t2i']['mean']:.3f} "
                     f"| {auc} | {minus} | {e.get('time_ratio_vs_plain', '-')} |")
    print("\n".join(lines))
    result = {"bench": "noise_robustness", "device": base.device, "n": len(runs),
              "table_md": "\n".join(lines),
              "bits": args.bits, "epochs": args.epochs, "meta_epochs": args.meta_epochs,
              "clean_fraction": args.clean_fraction, "weight_mode": args.weight_mode,
              "extra": args.set, "rates": args.rates, "seeds": args.seeds, "table": table,
              "runs": runs}
    write_result(result, f"noise_robustness{args.tag}-{base.device}.json")
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "table")}))


if __name__ == "__main__":
    main()
