"""`duchkit train` and `duchkit evaluate`.

    duchkit train --images DIR --texts DIR --out RUN [--bits 64] [--epochs 100] [--seed 0]
                  [--device auto|cpu|cuda] [--ablation DUCH-NA ...] [--resume] ...
    duchkit evaluate --run RUN [--map-variant standard|ir|authors] [--k 20] [--relevance class|pair]

A run folder holds: checkpoint.pt (model, optimisers, B, epoch, RNG states, the validation-
selected weights), run.json (config, inputs, splits, history), codes/ (a stage folder: one row per
image and per caption with its split and its packed code), metrics*.json/.md and pk_curve*.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from duchkit.pipelines.stage import ConfigError

log = logging.getLogger("duchkit")
CODES = "codes"


def add_parsers(sub) -> None:
    from duchkit.hashing.config import ABLATIONS, INPUT_NORMS, MAP_VARIANTS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train DUCH from embedding shards")
    p.add_argument("--images", type=Path, required=True, help="image embedding stage folder")
    p.add_argument("--texts", type=Path, required=True, help="text embedding stage folder")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--bits", type=int, default=d.bits, choices=[16, 32, 64, 128])
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--hidden", type=int, default=d.hidden, help="hidden width (Table I: 4096)")
    p.add_argument("--input-norm", choices=INPUT_NORMS, default=d.input_norm,
                   help="l2: scale every input embedding to unit norm first (as the authors' "
                   "loader does); none: raw embeddings")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--ablation", choices=sorted(ABLATIONS), default="DUCH",
                   help="Table III configuration (sets the weights below to 0)")
    for name in ("alpha", "beta", "gamma", "lambda_image", "lambda_text", "tau", "lr"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="Adam's (coupled, L2) weight decay of the hashing networks")
    p.add_argument("--weights-ref-bits", type=int, default=d.weights_ref_bits,
                   help="beta and gamma are the weights at this code length and scale by it / "
                   "bits (quantisation and bit balance grow with the bits, NT-Xent does not); "
                   "0 = the same beta and gamma at every code length")
    p.add_argument("--loss-reduction", choices=["mean", "sum"], default=d.reduction,
                   help="sum = the authors' batch-size-dependent scaling (comparison only)")
    p.add_argument("--lr-decay", type=float, default=d.lr_decay,
                   help="lr factor every 50 epochs (first at epoch 50; 0.8 = the paper's \"decreased "
                   "by one fifth\")")
    p.add_argument("--captions-per-image", type=int, choices=[0, 1], default=0,
                   help="0: all captions (one random per image each epoch); 1: the paper's "
                   "protocol, one seeded caption per image for training and evaluation")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="validation mAP every N epochs (model selection)")
    p.add_argument("--selection-se", type=float, default=d.selection_se,
                   help="keep the latest epoch whose validation mAP is within this many standard "
                   "errors of the best (the one-standard-error rule); 0 = the best epoch")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="save checkpoint.pt every N epochs (and at the end); a 4096-wide "
                   "model's checkpoint is ~110 MB, so N = 1 writes that much per epoch")
    p.add_argument("--k", type=int, default=20, help="K of mAP@K")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast of the networks in training (CUDA, or a CPU with bf16 units)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="hash codes and retrieval metrics of a trained run")
    p.add_argument("--run", type=Path, required=True, help="run folder of duchkit train")
    p.add_argument("--map-variant", choices=MAP_VARIANTS, default="standard",
                   help="standard: AP over the relevant hits of the top K (the hashing "
                   "literature's); ir: AP over min(K, R); authors: their non-standard mAP, only "
                   "to compare with published figures")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--relevance", choices=["class", "pair"], default="class",
                   help="class: same class label; pair: caption and image of the same pair")
    p.add_argument("--captions", choices=["all", "one"], default="all",
                   help="all: every caption the run coded; one: the paper's protocol, one "
                   "seeded caption per image (the draw --captions-per-image 1 trains on), so a "
                   "run trained on all captions is scored as published figures are")
    p.set_defaults(func=cmd_evaluate)


def _config(args) -> "TrainConfig":
    from duchkit.hashing.config import TrainConfig
    from duchkit.pipelines.runner import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise ConfigError(f"duchkit train: --device: {exc}") from None
    cfg = TrainConfig(bits=args.bits, epochs=args.epochs, batch_size=args.batch_size,
                      hidden=args.hidden, input_norm=args.input_norm, seed=args.seed,
                      device=device, alpha=args.alpha,
                      beta=args.beta, gamma=args.gamma, lambda_image=args.lambda_image,
                      lambda_text=args.lambda_text, tau=args.tau, lr=args.lr,
                      reduction=args.loss_reduction, lr_decay=args.lr_decay,
                      weights_ref_bits=args.weights_ref_bits, weight_decay=args.weight_decay,
                      captions_per_image=args.captions_per_image, eval_every=args.eval_every,
                      map_k=args.k, compile=args.compile, amp=args.amp,
                      checkpoint_every=args.checkpoint_every, selection_se=args.selection_se)
    cfg = cfg.with_ablation(args.ablation)
    try:
        return cfg.validate()
    except ValueError as exc:
        raise ConfigError(f"duchkit train: {exc}") from None


def codes_table(archive, model, cfg, splits: dict[str, np.ndarray]) -> pa.Table:
    """One row per image and per caption used: ids, class, split and the packed code."""
    from duchkit.hashing.codes import pack, to_bits
    from duchkit.hashing.data import paper_caption_choice
    import torch

    from duchkit.hashing.train import encode

    feats = archive.features
    dev = next(model.parameters()).device
    split_of = np.empty(feats.n, dtype=object)
    for name, idx in splits.items():
        split_of[idx] = name
    img_codes = pack(to_bits(encode(model.image, feats.image.to(dev))))
    n, c = feats.n, feats.captions
    if cfg.captions_per_image == 1:
        pick = paper_caption_choice(n, c, cfg.seed)
        cap_img, cap_slot = np.arange(n), pick
    else:
        cap_img, cap_slot = np.repeat(np.arange(n), c), np.tile(np.arange(c), n)
    text_in = feats.text[torch.as_tensor(cap_img), torch.as_tensor(cap_slot)].to(dev)
    txt_codes = pack(to_bits(encode(model.text, text_in)))
    label_names = np.array(archive.label_names + [None], dtype=object)
    lab = feats.labels.numpy()
    rows_img = {"item": ["image"] * n, "image_id": archive.image_ids,
                "caption_id": [None] * n, "label": label_names[lab].tolist(),
                "split": split_of.tolist()}
    rows_txt = {"item": ["caption"] * len(cap_img),
                "image_id": [archive.image_ids[i] for i in cap_img],
                "caption_id": [archive.caption_ids[i][s] for i, s in zip(cap_img, cap_slot)],
                "label": label_names[lab[cap_img]].tolist(), "split": split_of[cap_img].tolist()}
    codes = np.concatenate([img_codes, txt_codes])
    code_field = pa.field("code", pa.list_(pa.uint8(), codes.shape[1]),
                          metadata={"bits": str(cfg.bits), "packing": "numpy.packbits, "
                                    "big-endian bits, bit 1 = code value >= 0"})
    schema = pa.schema([pa.field("item", pa.string()), pa.field("image_id", pa.string()),
                        pa.field("caption_id", pa.string()), pa.field("label", pa.string()),
                        pa.field("split", pa.string()), code_field])
    cols = {k: rows_img[k] + rows_txt[k] for k in rows_img}
    code_arr = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), pa.uint8()),
                                                 codes.shape[1])
    return pa.Table.from_arrays([pa.array(cols[k], pa.string()) for k in cols] + [code_arr],
                                schema=schema)


def train_run(archive, cfg, out: Path, resume: bool = False, say=print) -> dict:
    """Train on an archive, write the run folder (checkpoint, run.json, codes/, metrics) and
    return the standard evaluation. Shared by `duchkit train` and `duchkit study`."""
    from duchkit.hashing.checkpoint import checkpoint_record
    from duchkit.hashing.train import train
    from duchkit.pipelines.stage_folder import write_stage_folder
    from duchkit.pipelines.store import atomic_write_json

    ck = out / "checkpoint.pt"
    if ck.exists() and not resume:
        raise ConfigError(f"duchkit train: {ck} exists; pass --resume to continue it or choose "
                          "another --out")

    def both(line: str) -> None:
        log.info(line)
        say(line)

    try:
        result = train(cfg, archive.features, out, resume=resume, log=both)
    except ValueError as exc:
        raise ConfigError(f"duchkit train: {exc}") from None
    table = codes_table(archive, result.model, cfg, result.splits)
    write_stage_folder(out / CODES, table, CODES, "duch-codes", cfg.to_json())
    atomic_write_json(out / "run.json", {
        "config": cfg.to_json(), "inputs": archive.sources, "warnings": archive.warnings,
        "has_labels": archive.has_labels, "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map, "train_seconds": round(result.seconds, 3),
        "splits": {k: len(v) for k, v in result.splits.items()}, "history": result.history,
        "checkpoint": checkpoint_record(out)})
    say(f"trained {cfg.bits} bits, selected epoch {result.best_epoch} (validation mAP@{cfg.map_k} "
        f"{result.best_val_map:.3f}) in {result.seconds:.1f} s -> {out}")
    return evaluate_run(out, "standard", cfg.map_k, "class" if archive.has_labels else "pair",
                        echo=say is print)


def cmd_train(args) -> int:
    from duchkit.pipelines.runner import setup_logging
    from duchkit.pipelines.training_data import load_archive

    cfg = _config(args)
    try:
        archive = load_archive(args.images, args.texts)
    except ValueError as exc:
        raise ConfigError(f"duchkit train: {exc}") from None
    for w in archive.warnings:
        print(f"warning: {w}")
    setup_logging(args.out)
    train_run(archive, cfg, args.out, args.resume, (lambda s: None) if args.quiet else print)
    return 0


def one_caption_rows(t: pa.Table, seed: int, where: Path) -> np.ndarray:
    """Mask of the code rows the paper's one-caption protocol keeps: every image, and of each
    image's captions (in the order train wrote them) the one `paper_caption_choice` draws for
    `seed`, the caption a `--captions-per-image 1` run of that seed trains and is scored on."""
    from duchkit.hashing.data import paper_caption_choice

    item = np.asarray(t.column("item").to_pylist(), dtype=object)
    image_id = np.asarray(t.column("image_id").to_pylist(), dtype=object)
    images = image_id[item == "image"]
    of = {name: i for i, name in enumerate(images)}
    cap_rows = np.flatnonzero(item == "caption")
    owner = np.array([of.get(name, -1) for name in image_id[cap_rows]], dtype=np.int64)
    if (owner < 0).any():
        raise ConfigError(f"duchkit evaluate: {where}: caption rows of an image with no image "
                          "row; the codes are not a run's of duchkit train")
    per_image = np.bincount(owner, minlength=len(images))
    if per_image.min() != per_image.max():
        raise ConfigError(f"duchkit evaluate: {where}: images have {per_image.min()} to "
                          f"{per_image.max()} captions; --captions one needs the same number "
                          "for every image")
    # position of each caption row among its image's captions, in table order
    order = np.argsort(owner, kind="stable")
    slot = np.empty(len(owner), dtype=np.int64)
    slot[order] = np.arange(len(owner)) - np.repeat(np.cumsum(per_image) - per_image, per_image)
    keep = item == "image"
    pick = paper_caption_choice(len(images), int(per_image[0]), seed)
    keep[cap_rows[slot == pick[owner]]] = True
    return keep


def evaluate_run(run: Path, variant: str, k: int, relevance: str, echo: bool = True,
                 captions: str = "all") -> dict:
    from duchkit.hashing.evaluate import evaluate_codes, markdown_table, plot_pk
    from duchkit.pipelines.store import StageStore, atomic_write_json

    store = StageStore(run / CODES)
    if not store.is_complete():
        raise ConfigError(f"duchkit evaluate: {run} has no {CODES}/ folder: is it a run folder "
                          "of duchkit train?")
    t = store.read_all()
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else None
    # a run trained on one caption per image coded only that one: --captions one keeps them all
    one_caption_run = info is not None and info["config"]["captions_per_image"] == 1
    one_of_all = captions == "one" and not one_caption_run
    if one_of_all:
        if info is None:
            raise ConfigError(f"duchkit evaluate: --captions one needs {run / 'run.json'} (the "
                              "run's seed picks the caption of each image)")
        t = t.filter(pa.array(one_caption_rows(t, info["config"]["seed"], run / CODES)))
    item = np.asarray(t.column("item").to_pylist(), dtype=object)
    codes_all = np.asarray(t.column("code").combine_chunks().flatten().to_numpy(),
                           np.uint8).reshape(t.num_rows, -1)
    if relevance == "class":
        labels = t.column("label").to_pylist()
        if any(lab is None for lab in labels):
            raise ConfigError(f"duchkit evaluate: {sum(lab is None for lab in labels)} item(s) of "
                              f"{run / CODES} have no class label, so class-label mAP cannot be "
                              "computed; use --relevance pair (caption and its image)")
        key = np.asarray(labels, dtype=object)
    else:
        key = np.asarray(t.column("image_id").to_pylist(), dtype=object)
    _, key = np.unique(key.astype(str), return_inverse=True)
    split = np.asarray(t.column("split").to_pylist(), dtype=object)
    sel = {"image": item == "image", "text": item == "caption"}
    results = evaluate_codes({m: codes_all[s] for m, s in sel.items()},
                             {m: key[s] for m, s in sel.items()},
                             {m: split[s] for m, s in sel.items()}, k, variant)
    bits = codes_all.shape[1] * 8
    run_relevance = "class"
    if info is not None and not info["has_labels"]:
        run_relevance = "pair"
    # the run's own evaluation is metrics.json; other variants get a suffix
    suffix = "" if (variant, relevance) == ("standard", run_relevance) else f"-{variant}-{relevance}"
    title = f"DUCH {bits} bits, {relevance} relevance"
    if one_of_all:
        suffix, title = f"-{variant}-{relevance}-one-caption", title + ", one caption per image"
    atomic_write_json(run / f"metrics{suffix}.json", {
        "bits": bits, "k": k, "variant": variant, "relevance": relevance,
        "captions": "one per image (paper protocol)" if captions == "one" or one_caption_run
                    else "all",
        "tie_rule": "equal Hamming distance: lower retrieval index first", "results": results})
    (run / f"metrics{suffix}.md").write_text(markdown_table(results, title))
    plot_pk(results, run / f"pk_curve{suffix}.png", title)
    if echo:
        print(markdown_table(results, title))
        print(f"wrote {run / f'metrics{suffix}.json'}, .md and pk_curve{suffix}.png")
    return results


def cmd_evaluate(args) -> int:
    evaluate_run(args.run, args.map_variant, args.k, args.relevance, captions=args.captions)
    return 0
