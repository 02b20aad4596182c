"""The run folder of `duchkit train`: what it holds and how its parts are read and written.

    RUN/checkpoint.pt   model, optimisers, binary targets, epoch, RNG states and the validation-
                        selected weights; tensors and plain data only (hashing.checkpoint)
    RUN/run.json        config, inputs (the embedding stage folders), splits, history, and the
                        checkpoint's sha256, checked before it is loaded
    RUN/codes/          a stage folder: one row per image and per caption coded, with its split
                        and its packed code
    RUN/metrics*.json, metrics*.md, pk_curve*.png   evaluations (metrics.json: the run's own)
    RUN/noise_mask.parquet    with --noise-rate: the training images whose captions were replaced
    RUN/pair_weights.parquet  with --robust: each training pair's final weight (weights.png)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from duchkit.hashing.checkpoint import CHECKPOINT, RUN_JSON  # noqa: F401  (part of the format)
from duchkit.pipelines.schema import fixed_size_list
from duchkit.pipelines.stage import ConfigError

CODES = "codes"
NOISE_MASK = "noise_mask.parquet"      # injected wrong captions: image_id, noisy
PAIR_WEIGHTS = "pair_weights.parquet"  # robust runs: each training pair's final weight


def read_run_info(run: Path) -> dict | None:
    """run.json of a run folder, or None when there is none; a file that is not a JSON object
    is a ConfigError naming it."""
    path = Path(run) / RUN_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return info


def run_inputs(run: Path) -> dict:
    path = run / RUN_JSON
    info = read_run_info(run)
    if info is None:
        raise ConfigError(f"{path} is missing: is {run} a run folder of "
                          "duchkit train?")
    if "inputs" not in info:
        raise ConfigError(f"{path} names no inputs: the training of {run} did not finish")
    return info["inputs"]


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
    code_arr = fixed_size_list(codes, pa.uint8())
    return pa.Table.from_arrays([pa.array(cols[k], pa.string()) for k in cols] + [code_arr],
                                schema=schema)


