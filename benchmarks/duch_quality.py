"""DUCH retrieval quality on real UCM features (offline-profile encoders), next to the bar (the
authors' public trainer measured on the same kind of features) and the paper's Table IV.

    python benchmarks/ucm_features.py --out FEAT        # once
    python benchmarks/duch_quality.py --features FEAT [--bits 16 32 64 128] [--seeds 0 1]
                                      [--epochs 100] [--protocol paper|all|paper-eval]
                                      [--baseline] [--set KEY=VALUE ...]
    python benchmarks/duch_quality.py --summarise RESULT   # paired differences of a result
    python benchmarks/duch_quality.py --summarise R1 R2 --tag=-pooled   # seeds of R1 + R2
    python benchmarks/duch_quality.py --compare A B --tag=-x   # A - B by seed, e.g. --set amp=true

protocol paper: one seeded caption per image for training and evaluation (the authors' setting,
so the text database has one caption per retrieval image); all: all five captions; paper-eval:
trained on all five captions (duchkit's default, one random caption per image each epoch;
the authors' code uses one), scored as the paper protocol is, on
the very same caption of each image (`duchkit evaluate --captions one`). Model
selection on the validation slice carved from train; mAP@20 on the query/retrieval split, class
relevance: standard AP@20 (over the relevant hits of the top 20, as the bar), the ir
normalisation (over min(20, R)) and the authors' variant.

--baseline also trains the authors-structured loop (benchmarks/duch_train.py, as
benchmarks/duch_baseline_real.py runs it) on the very same features, caption choice and
query/retrieval split for every bits x seed, and says whether ours beats it in every cell (the
comparison that matters: same features, same splits). Protocols paper and paper-eval (the same evaluation).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from duchkit.hashing.config import TrainConfig
from duchkit.hashing.metrics import VARIANTS
from bench_results import parse_settings, write_result

ROOT = Path(__file__).resolve().parents[1]

BAR = {  # the authors' public trainer on the offline-profile features, UCM, mAP@20
    "authors": {"i2t": [.832, .876, .924, .925], "t2i": [.879, .951, .979, .976]},
    "standard": {"i2t": [.863, .889, .935, .923], "t2i": [.913, .965, .983, .981]},
}
PAPER = {"i2t": [.760, .794, .844, .870], "t2i": [.799, .851, .916, .927]}
BITS = [16, 32, 64, 128]


def train_config(bits: int, seed: int, epochs: int, protocol: str, settings: list[str]
                 ) -> TrainConfig:
    """The TrainConfig of one run: the protocol's caption setting plus KEY=VALUE settings
    (JSON values: 100, true, 1e-3, "sum")."""
    values = parse_settings(settings)
    ablation = values.pop("ablation", "DUCH")
    cfg = TrainConfig(bits=bits, epochs=epochs, seed=seed, device="cpu",
                      captions_per_image=1 if protocol == "paper" else 0, **values)
    return cfg.with_ablation(ablation).validate()


def cached_authors_loop(archive, features: Path, bits: int, seed: int, epochs: int) -> dict:
    """The authors' loop's maps for (features, bits, seed, epochs), trained once: cached under
    benchmarks/.cache, keyed by the feature shards' manifests and the source of the loop and of
    everything in hashing/ it uses (model, losses, codes, metrics), so any change retrains it."""
    from duch_baseline_real import authors_loop_maps

    h = hashlib.sha256(repr((bits, seed, epochs)).encode())
    sources = [features / s / "_manifest.json" for s in ("image_embeddings", "text_embeddings")]
    sources += [ROOT / "benchmarks" / "duch_train.py", ROOT / "benchmarks" / "duch_baseline_real.py"]
    for p in sources + sorted((ROOT / "hashing").glob("*.py")):
        h.update(p.read_bytes())
    cache = ROOT / "benchmarks" / ".cache" / f"authors-loop-{h.hexdigest()[:20]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    maps = authors_loop_maps(archive.features, bits, seed, epochs)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(maps))
    return maps


def paired_difference(ours: list[dict], theirs: list[dict]) -> dict:
    """Ours minus theirs per variant and direction, paired by seed (same split and caption
    draw): mean, its standard error over seeds, and the seeds where ours is ahead. A mean
    within about two standard errors of zero is a tie at this many seeds."""
    out = {}
    for v in VARIANTS:
        for d in ("i2t", "t2i"):
            x = np.array([o[v][d] - t[v][d] for o, t in zip(ours, theirs, strict=True)])
            se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
            out.setdefault(v, {})[d] = {"diff": round(float(x.mean()), 4), "se": round(se, 4),
                                        "ahead": int((x > 0).sum()), "seeds": len(x)}
    return out


def cell(per_seed: list[dict], bits: int) -> dict:
    """One bit length's row of a result: the per-seed figures, their means, the bar and the
    paper's figure beside them, and, where every seed also ran the authors' loop, its means and
    the paired differences."""
    j = BITS.index(bits)

    def means(of):
        return {v: {d: round(float(np.mean([of(s)[v][d] for s in per_seed])), 4)
                    for d in ("i2t", "t2i")} for v in VARIANTS}

    mean = means(lambda s: s)
    row = {"mean": mean, "seeds": per_seed,
           "bar": {v: {d: BAR[v][d][j] for d in ("i2t", "t2i")} for v in BAR},
           "paper_table_iv": {d: PAPER[d][j] for d in ("i2t", "t2i")},
           "beats_bar": all(mean[v][d] > BAR[v][d][j] for v in BAR for d in ("i2t", "t2i"))}
    if all("authors_loop" in s for s in per_seed):
        mean["authors_loop"] = means(lambda s: s["authors_loop"])
        row["ours_minus_loop"] = minus_loop(per_seed)
        row["beats_authors_loop"] = all(mean[v][d] > mean["authors_loop"][v][d]
                                        for v in VARIANTS for d in ("i2t", "t2i"))
    return row


def minus_loop(per_seed: list[dict]) -> dict:
    """Ours minus the authors' loop run on the same seed (see paired_difference)."""
    return paired_difference(per_seed, [s["authors_loop"] for s in per_seed])


def difference_table(rows: dict, key: str = "ours_minus_loop",
                     title: str = "Ours minus their loop", first: str = "ours") -> str:
    lines = ["| bits | " + " | ".join(f"{d.replace('2', '->').upper()} {v}" for v in VARIANTS
                                      for d in ("i2t", "t2i")) + " |",
             "|---|" + "---|" * (2 * len(VARIANTS))]
    for bits, r in rows.items():
        pd = r[key]
        lines.append(f"| {bits} | " + " | ".join(
            f"{pd[v][d]['diff']:+.3f} ± {pd[v][d]['se']:.3f} ({pd[v][d]['ahead']}/"
            f"{pd[v][d]['seeds']})" for v in VARIANTS for d in ("i2t", "t2i")) + " |")
    return (f"{title}, paired by seed: mean ± standard error (seeds where {first} is "
            "ahead)\n\n" + "\n".join(lines))


def summarise(paths: list[Path], tag: str = "") -> None:
    """Add the paired differences to an existing --baseline result file (no training). With
    several files (the same protocol, epochs and extra options; different seeds), pool their
    seeds per bit length into duch_quality-<protocol><tag>-cpu.json and summarise that."""
    if len(paths) > 1:
        paths = [pool(paths, tag)]
    path = paths[0]
    result = json.loads(path.read_text())
    rows = {b: r for b, r in result["results"].items()
            if all("authors_loop" in s for s in r["seeds"])}
    if not rows:
        raise SystemExit(f"{path}: no run of the authors' loop in it (made without --baseline)")
    for r in rows.values():
        r["ours_minus_loop"] = minus_loop(r["seeds"])
    table = difference_table(rows)
    if table not in result.get("table", ""):
        result["table"] = result.get("table", "") + "\n\n" + table
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(table)


def compare(a: Path, b: Path, tag: str) -> None:
    """Two results of ours on the same features and protocol (an option on or off, say), paired
    by bits and seed: A minus B per cell, and the ratio of their training times."""
    ra, rb = (json.loads(p.read_text()) for p in (a, b))
    if ra["protocol"] != rb["protocol"] or ra["epochs"] != rb["epochs"]:
        raise SystemExit(f"{a} and {b}: another protocol or epoch count, not comparable")
    rows = {}
    for bits in ra["results"].keys() & rb["results"].keys():
        sa = {s["seed"]: s for s in ra["results"][bits]["seeds"]}
        sb = {s["seed"]: s for s in rb["results"][bits]["seeds"]}
        seeds = sorted(sa.keys() & sb.keys())
        if seeds:
            rows[bits] = {"seeds": seeds, "a_minus_b": paired_difference(
                [sa[s] for s in seeds], [sb[s] for s in seeds]),
                "train_s_a_over_b": round(float(np.median(
                    [sa[s]["train_s"] / sb[s]["train_s"] for s in seeds])), 3)}
    if not rows:
        raise SystemExit(f"{a} and {b}: no bit length and seed in common")
    rows = dict(sorted(rows.items(), key=lambda kv: int(kv[0])))
    times = ", ".join(f"{bits} bits {r['train_s_a_over_b']:.2f}" for bits, r in rows.items())
    table = (difference_table(rows, "a_minus_b", f"A minus B ({a.name} minus {b.name})", "A")
             + f"\n\nTraining time, A / B (median over seeds): {times}")
    write_result({"bench": "duch_quality", "device": "cpu", "a": a.name, "b": b.name,
                  "extra_a": ra["extra"], "extra_b": rb["extra"], "results": rows,
                  "table": table}, f"duch_quality-compare{tag}-cpu.json")
    print(table)


def pool(paths: list[Path], tag: str) -> Path:
    """One result holding the seeds of several runs of the same setting, their means redone."""
    results = [json.loads(p.read_text()) for p in paths]
    setting = {k: results[0][k] for k in ("protocol", "epochs", "extra", "baseline")}
    for p, r in zip(paths, results):
        if {k: r[k] for k in setting} != setting:
            raise SystemExit(f"{p}: another setting than {paths[0]} ({setting}): not pooled")
    rows = {}
    for r in results:
        for bits, row in r["results"].items():
            seeds = rows.setdefault(bits, [])
            if {s["seed"] for s in seeds} & {s["seed"] for s in row["seeds"]}:
                raise SystemExit(f"{bits} bits: a seed appears in two of the pooled files")
            seeds += row["seeds"]
    rows = {bits: cell(seeds, int(bits)) for bits, seeds in rows.items()}
    return write_result({"bench": "duch_quality", "device": "cpu", **setting,
                         "seeds": sorted({s["seed"] for r in rows.values() for s in r["seeds"]}),
                         "pooled_from": [p.name for p in paths], "results": rows, "table": ""},
                        f"duch_quality-{setting['protocol']}{tag}-cpu.json")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=Path)
    ap.add_argument("--summarise", type=Path, nargs="+", metavar="RESULT",
                    help="only add the paired ours - theirs differences to a --baseline result; "
                    "several results of one setting are pooled (into the --tag file)")
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"),
                    help="only pair two results of ours by bits and seed: A - B per cell and "
                    "the training time ratio (into duch_quality-compare<tag>-cpu.json)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/duch-quality"))
    ap.add_argument("--bits", type=int, nargs="+", default=BITS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--protocol", choices=["paper", "all", "paper-eval"], default="paper")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--baseline", action="store_true",
                    help="also train the authors-structured loop on the same features/splits")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig value, e.g. --set checkpoint_every=100 --set amp=true; "
                    "ablation=NAME applies a Table III ablation")
    args = ap.parse_args()
    if args.summarise:
        return summarise(args.summarise, args.tag)
    if args.compare:
        return compare(*args.compare, args.tag)
    if args.features is None:
        ap.error("--features is required")
    if args.baseline and args.protocol == "all":
        ap.error("--baseline compares under the paper's evaluation (one caption per image): "
                 "--protocol paper or paper-eval")
    from duchkit.pipelines.evaluation import evaluate_run
    from duchkit.pipelines.training import train_run
    from duchkit.pipelines.training_data import load_archive

    archive = load_archive(args.features / "image_embeddings", args.features / "text_embeddings")
    rows = {}
    for bits in args.bits:
        per_seed = []
        for seed in args.seeds:
            run = args.out / f"{args.protocol}-{bits}-{seed}"
            t = time.perf_counter()
            cfg = train_config(bits, seed, args.epochs, args.protocol, args.set)
            train_run(archive, cfg, run, say=lambda s: None)
            # train's own evaluation (metrics.json) is the standard variant on what it coded
            one = args.protocol == "paper-eval"
            for variant in ("standard", "ir", "authors") if one else ("ir", "authors"):
                evaluate_run(run, variant, cfg.map_k, "class", echo=False,
                             captions="one" if one else "all")
            name = {v: f"metrics-{v}-class{'-one-caption' if one else ''}.json"
                    for v in ("standard", "ir", "authors")}
            if not one:
                name["standard"] = "metrics.json"
            std, ir, auth = (json.loads((run / name[v]).read_text())["results"]
                             for v in ("standard", "ir", "authors"))
            info = json.loads((run / "run.json").read_text())
            per_seed.append({"seed": seed, "best_epoch": info["best_epoch"],
                             "best_val_map": round(info["best_val_map"], 4),
                             "train_s": info["train_seconds"],
                             "standard": {d: std[d]["map"] for d in ("i2t", "t2i")},
                             "ir": {d: ir[d]["map"] for d in ("i2t", "t2i")},
                             "authors": {d: auth[d]["map"] for d in ("i2t", "t2i")}})
            if args.baseline:
                per_seed[-1]["authors_loop"] = cached_authors_loop(archive, args.features,
                                                                   bits, seed, args.epochs)
            print(json.dumps({"bits": bits, **per_seed[-1]}), f"({time.perf_counter() - t:.0f} s)",
                  flush=True)
        rows[bits] = cell(per_seed, bits)
    lines = ["| bits | I->T std (ours / bar) | T->I std (ours / bar) | I->T authors (ours / bar) "
             "| T->I authors (ours / bar) | paper I->T / T->I |", "|---|---|---|---|---|---|"]
    for bits, r in rows.items():
        m, b, p = r["mean"], r["bar"], r["paper_table_iv"]
        lines.append(f"| {bits} | {m['standard']['i2t']:.3f} / {b['standard']['i2t']:.3f} | "
                     f"{m['standard']['t2i']:.3f} / {b['standard']['t2i']:.3f} | "
                     f"{m['authors']['i2t']:.3f} / {b['authors']['i2t']:.3f} | "
                     f"{m['authors']['t2i']:.3f} / {b['authors']['t2i']:.3f} | "
                     f"{p['i2t']:.3f} / {p['t2i']:.3f} |")
    if archive is not None:
        lines += ["", "Same features, caption choice and query/retrieval split; authors-structured "
                  "loop = final epoch, trained on all of the 50% train part.", "",
                  "| bits | I->T std (ours / their loop) | T->I std (ours / their loop) | "
                  "I->T ir (ours / their loop) | T->I ir (ours / their loop) | "
                  "I->T authors (ours / their loop) | T->I authors (ours / their loop) |",
                  "|---|---|---|---|---|---|---|"]
        for bits, r in rows.items():
            m, b = r["mean"], r["mean"]["authors_loop"]
            lines.append(f"| {bits} | " + " | ".join(
                f"{m[v][d]:.3f} / {b[v][d]:.3f}" for v in VARIANTS
                for d in ("i2t", "t2i")) + " |")
        lines += ["", difference_table(rows)]
    table = "\n".join(lines)
    print(table)
    result = {"bench": "duch_quality", "device": "cpu", "protocol": args.protocol,
              "epochs": args.epochs, "seeds": args.seeds, "extra": args.set,
              "baseline": args.baseline,
              "results": rows, "table": table}
    write_result(result, f"duch_quality-{args.protocol}{args.tag}-cpu.json")
    print(json.dumps({k: v for k, v in result.items() if k != "results"}))


if __name__ == "__main__":
    main()
