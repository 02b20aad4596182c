"""The DUCH training loop, readable top to bottom.

    cfg = TrainConfig(bits=64)
    result = train(cfg, features, run_dir)      # features: hashing.data.Features

Everything lives on `cfg.device`: the features, the binary targets B, the code buffers H, the
data order. The loop never asks the device for a number inside an epoch (loss sums stay tensors),
so a GPU runs the epoch without host round-trips; the only syncs are the validation mAP and the
epoch's loss log. All randomness (init, B, data order, and per image and epoch the caption, the
image view and the caption variant) comes from the seed, and the data order comes from a
generator saved in the checkpoint, so the same seed gives the same codes and a resumed run
equals an uninterrupted one.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from duchkit.hashing.checkpoint import CHECKPOINT, checkpoint_due, load_checkpoint, rng_states, \
    save_checkpoint, set_rng_states
from duchkit.hashing.data import Features, split_indices
from duchkit.hashing.config import ABLATIONS, TrainConfig  # noqa: F401  (re-exported)
from duchkit.hashing.losses import binary_target, discriminator_loss, hashing_losses
from duchkit.hashing.metrics import map_at_k_torch
from duchkit.hashing.model import DUCH
from duchkit.hashing.noise import inject_noise
from duchkit.hashing.robust import Robustness, code_disagreement


@dataclass
class TrainResult:
    model: DUCH
    config: TrainConfig
    splits: dict[str, np.ndarray]
    best_epoch: int
    best_val_map: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    noise_mask: np.ndarray | None = None  # [N] True = captions replaced (injected noise)
    pair_weights: np.ndarray | None = None  # [train] the final weight of each training pair
    # [train] robust runs: 1 - cos(image code, caption code) of the kept model, averaged over the
    # image's captions: ranks pairs whose weights saturate at the same value (suspicious lists)
    pair_disagreement: np.ndarray | None = None
    # wall seconds of each epoch this call ran (0-based epoch -> s; chnr: phase 1 then 2)
    epoch_seconds: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def encode(net: torch.nn.Module, x: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """Continuous codes of x [n, d] in eval mode (batch-norm running statistics)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)])
    net.train(was_training)
    return out


def variance_of_mean(x: torch.Tensor) -> torch.Tensor:
    """Squared standard error of x's mean; 0 for a single value, which has no spread to measure
    (so a one-image validation slice selects the plain best epoch)."""
    return x.var() / len(x) if len(x) > 1 else x.new_zeros(())


def validation_map(model: DUCH, query: tuple, database: tuple, k: int) -> torch.Tensor:
    """Mean of I->T and T->I mAP@k ("ir") of the validation queries against `database`, and its
    standard error over the queries: a tensor [2] (one host sync reads both).

    Each side is (images [n, d], their labels [n], captions [r, d], their labels [r]). The
    database is the validation slice plus (a sample of) the train part: a validation slice is
    small (105 UCM images, 5 of the demo's), and ranked only among themselves its mAP mostly
    measures which classes happened to land in it, so the "best" epoch was noise on small
    archives. Query and retrieval items are never part of it."""
    qi, ql, qt, qlt = query
    di, dl, dt, dlt = database
    hqi, hqt = encode(model.image, qi), encode(model.text, qt)
    hdi, hdt = torch.cat([hqi, encode(model.image, di)]), torch.cat([hqt, encode(model.text, dt)])
    dl, dlt = torch.cat([ql, dl]), torch.cat([qlt, dlt])
    # selection uses the "ir" normalisation: it also charges the relevant items an epoch leaves
    # out of the top k, where "standard" would score a lone hit at rank 1 as a perfect query
    i2t = map_at_k_torch(hqi, hdt, ql, dlt, k, "ir", per_query=True)
    t2i = map_at_k_torch(hqt, hdi, qlt, dl, k, "ir", per_query=True)
    se = (variance_of_mean(i2t) + variance_of_mean(t2i)).sqrt() / 2
    return torch.stack([(i2t.mean() + t2i.mean()) / 2, se])


VAL_DB_TRAIN = 1000  # train images added to the validation database (one caption each)


@dataclass
class TrainingData:
    """What a training loop reads, on the device: the features after the caption protocol and
    the injected noise, the split, the train part's embeddings and labels, and the validation
    query and database (validation_map)."""
    feats: Features
    splits: dict[str, np.ndarray]
    noise_mask: np.ndarray
    x: torch.Tensor  # [n, di] train images
    x_aug: torch.Tensor  # [n, V, di]
    t: torch.Tensor  # [n, C, dt] their captions
    t_aug: torch.Tensor  # [n, C, A, dt]
    trn_labels: torch.Tensor  # [n]
    val_query: tuple
    val_database: tuple


def training_data(cfg: TrainConfig, feats: Features, device: torch.device,
                  log: Callable[[str], None] = print) -> TrainingData:
    """The split, the injected noise and the device tensors of a training run: the same for
    DUCH and the baselines (hashing.baselines), so they train and select on the same data."""
    if cfg.captions_per_image == 1:
        feats = feats.one_caption_per_image(cfg.seed)
    splits = split_indices(feats.n, cfg.seed, val_of_train=cfg.val_of_train)
    n = len(splits["train"])
    if n < cfg.batch_size:
        raise ValueError(f"the train split has {n} images, fewer than batch_size "
                         f"{cfg.batch_size}: lower the batch size or use a larger archive")
    if len(splits["val"]) == 0:
        raise ValueError("the validation slice is empty: raise val_of_train or use more images")
    # wrong captions on purpose: the train part, validation slice included, as noisy as asked
    feats, noise_mask = inject_noise(feats, np.concatenate([splits["train"], splits["val"]]),
                                     cfg.noise_rate, cfg.noise_mode, cfg.seed)

    # ---- data on the device, once
    tr = torch.as_tensor(splits["train"])
    x, x_aug = feats.image[tr].to(device), feats.image_aug[tr].to(device)
    t, t_aug = feats.text[tr].to(device), feats.text_aug[tr].to(device)
    if t_aug.dim() == 3:  # one variant per caption
        t_aug = t_aug[:, :, None]
    va = torch.as_tensor(splits["val"])
    val_image, val_text = feats.image[va].to(device), feats.text[va].to(device)
    val_labels, trn_labels = feats.labels[va].to(device), feats.labels[tr].to(device)
    if (feats.labels[va] < 0).any():  # no class labels: select on paired relevance instead
        val_labels = torch.arange(len(va), device=device)
        trn_labels = torch.arange(len(va), len(va) + len(tr), device=device)
        log("validation uses paired relevance: some validation images have no class label")
    # validation database: the slice plus up to VAL_DB_TRAIN train images with one seeded
    # caption each (encoding every train caption each epoch would dominate the training time)
    pick = np.random.default_rng([cfg.seed, 2])
    sub = torch.as_tensor(np.sort(pick.choice(len(tr), min(len(tr), VAL_DB_TRAIN),
                                              replace=False)))
    cap = torch.as_tensor(pick.integers(0, t.shape[1], len(sub)))
    c = val_text.shape[1]
    val_query = (val_image, val_labels, val_text.reshape(-1, val_text.shape[2]),
                 val_labels.repeat_interleave(c))
    sub_dev = sub.to(device)
    val_database = (x[sub_dev], trn_labels[sub_dev], t[sub_dev, cap.to(device)],
                    trn_labels[sub_dev])
    return TrainingData(feats, splits, noise_mask, x, x_aug, t, t_aug, trn_labels, val_query,
                        val_database)


def select_epoch(val: float, se: float, top_map: float, top_se: float,
                 selection_se: float) -> tuple[float, float, bool]:
    """One evaluated epoch through model selection: the new best (top_map, top_se) and whether
    this epoch is kept. Selection is on the validation slice only; the kept epoch is the latest
    within selection_se standard errors of the best (TrainConfig), so always at or after the
    best one, since the best qualifies."""
    if val > top_map:
        top_map, top_se = val, se
    return top_map, top_se, val >= top_map - selection_se * top_se


def check_resumable(ck: dict, path: Path, model: torch.nn.Module, cfg: TrainConfig) -> None:
    """A checkpoint continues only the run it was written by: same model shape, same method."""
    if checkpoint_shape(ck) != model.shape():
        raise ValueError(f"{path} was trained for {ck['shape']}, this run needs "
                         f"{model.shape()}: use another --out or the same --bits/features")
    method = (ck.get("config") or {}).get("method", "duch")
    if method != cfg.method:
        raise ValueError(f"{path} was trained with method {method!r}, this run is "
                         f"{cfg.method!r}: use another --out or the same --method")


def train(cfg: TrainConfig, feats: Features, run_dir: Path | None = None, resume: bool = False,
          log: Callable[[str], None] = print, stop_after: int | None = None) -> TrainResult:
    """Train DUCH on the train split of `feats`; returns the validation-selected model (the
    latest epoch within `cfg.selection_se` standard errors of the best validation mAP).
    `cfg.method` "djsrh" or "jdsh" trains that baseline instead (hashing.baselines).

    With `cfg.noise_rate`, wrong captions are injected into the training images first
    (hashing.noise); with `cfg.robust`, each pair's inter-modal term is weighed by how much it
    is trusted (hashing.robust; chnr adds `cfg.meta_epochs` of phase 1 before the main epochs).
    `run_dir` receives `checkpoint.pt` every `checkpoint_every` epochs; `resume` continues from
    it. `stop_after` ends the run after that many epochs (an interruption, for tests)."""
    cfg.validate()
    if cfg.method != "duch":  # DJSRH or JDSH: the same data, networks and selection
        from duchkit.hashing.baselines import train_baseline

        return train_baseline(cfg, feats, run_dir, resume, log, stop_after)
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    data = training_data(cfg, feats, device, log)
    feats, splits, noise_mask = data.feats, data.splits, data.noise_mask
    x, x_aug, t, t_aug, trn_labels = data.x, data.x_aug, data.t, data.t_aug, data.trn_labels
    val_query, val_database, n = data.val_query, data.val_database, len(splits["train"])
    n_views, n_caps, n_variants = x_aug.shape[1], t.shape[1], t_aug.shape[2]

    # ---- model, optimisers, binary targets, code buffers
    model = DUCH(feats.image_dim, feats.text_dim, cfg.bits, cfg.hidden,
                 cfg.input_norm).to(device)
    adam = torch.optim.AdamW if cfg.weight_decay_mode == "decoupled" else torch.optim.Adam
    opt = adam(model.hash_parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
               weight_decay=cfg.weight_decay, fused=True)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.disc_lr,
                             betas=cfg.disc_betas, eps=cfg.disc_eps,
                             weight_decay=cfg.disc_weight_decay, fused=True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    B = torch.randint(0, 2, (n, cfg.bits), generator=gen, device=device).float() * 2 - 1
    H = torch.zeros(4, n, cfg.bits, device=device)  # image, image_aug, text, text_aug
    w = cfg.weights()

    # ---- robustness to wrong captions: a weight per training pair (hashing.robust)
    robust = Robustness(cfg, feats, noise_mask[splits["train"]], x, n, device, log)
    total_epochs = robust.meta_epochs + cfg.epochs
    # selection: (top_map, top_se) is the best validation mAP so far and its standard error;
    # (best_epoch, best_map, best_state) the epoch kept, the latest within selection_se of it
    start_epoch, best_epoch, best_map, best_state, history = 0, -1, -1.0, None, []
    top_map, top_se = -1.0, 0.0

    ckpt_path = Path(run_dir) / CHECKPOINT if run_dir else None
    if resume and ckpt_path and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, device)
        check_resumable(ck, ckpt_path, model, cfg)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        opt_d.load_state_dict(ck["opt_d"])
        B.copy_(ck["B"]), H.copy_(ck["H"])
        gen.set_state(ck["gen"].to(gen.get_state().device))
        set_rng_states(ck["rng"])
        robust.load_state_dict(ck.get("robust") or {})
        start_epoch, best_epoch, best_map = ck["epoch"] + 1, ck["best_epoch"], ck["best_map"]
        best_state, history = ck["best_state"], ck["history"]
        top_map, top_se = ck.get("top_map", best_map), ck.get("top_se", 0.0)
        log(f"resumed from {ckpt_path} after epoch {ck['epoch'] + 1}")

    image_net, text_net, disc = model.image, model.text, model.discriminator
    if cfg.compile:
        image_net, text_net, disc = (torch.compile(m) for m in (image_net, text_net, disc))
    # bf16 autocast of the networks' forward passes on any device: CUDA, and CPUs with bf16
    # units (AVX512-BF16, AMX), where it is faster too; codes and validation stay fp32
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)
    if cfg.amp and device.type == "cpu" and not cpu_has_bf16():
        log("warning: this CPU has no bf16 units; --amp emulates bf16 and is likely slower")

    epoch_seconds: dict[int, float] = {}  # this call's epochs; not in history (not state)
    saved_at = time.perf_counter()  # of the last checkpoint; this call's start counts as one
    for epoch in range(start_epoch, total_epochs):
        t_epoch = time.perf_counter()
        if stop_after is not None and epoch >= stop_after:
            break
        meta = epoch < robust.meta_epochs  # chnr's phase 1: the clean subset only
        if epoch == robust.meta_epochs and not robust.scored:
            robust.score_pairs(t)  # the frozen detector weighs every pair, once
        phase_epoch = epoch if meta else epoch - robust.meta_epochs
        lr_scale = cfg.lr_decay ** (phase_epoch // cfg.lr_decay_every)  # first decay at 50
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_scale
        model.train()
        rows = robust.clean_rows if meta else None
        order = torch.randperm(n if rows is None else len(rows), generator=gen, device=device)
        perm = order if rows is None else rows[order]
        caption = torch.randint(0, n_caps, (n,), generator=gen, device=device)
        view = torch.randint(0, n_views, (n,), generator=gen, device=device)
        variant = (torch.randint(0, n_variants, (n,), generator=gen, device=device)
                   if n_variants > 1 else torch.zeros(n, dtype=torch.long, device=device))
        sums = torch.zeros(7, device=device)
        for idx in perm.split(cfg.batch_size):
            if len(idx) < 2:  # batch-norm needs two samples; a shape, not a device value
                continue
            with amp:
                h_img, h_img_aug = image_net(torch.cat([x[idx], x_aug[idx, view[idx]]])).float().chunk(2)
                h_txt, h_txt_aug = text_net(torch.cat([
                    t[idx, caption[idx]], t_aug[idx, caption[idx], variant[idx]]])).float().chunk(2)
            if meta:
                robust.detector_step(idx, x, x_aug, t, view, caption, trn_labels, gen)
            d_image = None
            if w.alpha:  # discriminator step: text codes real, image codes fake (eq. 5)
                opt_d.zero_grad(set_to_none=True)
                d_loss = discriminator_loss(disc(torch.cat([h_txt, h_txt_aug]).detach()),
                                            disc(torch.cat([h_img, h_img_aug]).detach()),
                                            w.reduction)
                d_loss.backward()
                opt_d.step()
                d_image = disc(torch.cat([h_img, h_img_aug]))  # graph reaches the image net
            terms = hashing_losses(h_img, h_img_aug, h_txt, h_txt_aug, B[idx], d_image, w,
                                   None if meta else robust.batch_weights(idx))
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            for slot, h in enumerate((h_img, h_img_aug, h_txt, h_txt_aug)):
                H[slot].index_copy_(0, idx, h.detach())
            sums += torch.stack([terms[k].detach() for k in
                                 ("total", "inter", "intra_image", "intra_text", "adversarial",
                                  "quantisation", "bit_balance")])
        B = binary_target(H[0], H[1], H[2], H[3])  # eq. 8, once per epoch over the whole set
        if not meta:
            robust.end_of_epoch(phase_epoch, H[0], H[2])  # gmm: refit on this epoch's codes

        row = dict(zip(("total", "inter", "intra_image", "intra_text", "adversarial",
                        "quantisation", "bit_balance"), sums.tolist()))
        row.update(epoch=epoch + 1, lr=cfg.lr * lr_scale)
        row.update(robust.diagnostics(meta))
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == total_epochs:
            val, se = validation_map(model, val_query, val_database, cfg.map_k).tolist()
            row["val_map"], row["val_se"] = val, se
            top_map, top_se, keep = select_epoch(val, se, top_map, top_se, cfg.selection_se)
            if keep:
                best_map, best_epoch = val, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(row)
        epoch_seconds[epoch] = time.perf_counter() - t_epoch
        log(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
        if ckpt_path and checkpoint_due(epoch, total_epochs, cfg.checkpoint_every,
                                        cfg.checkpoint_seconds, time.perf_counter() - saved_at):
            save_checkpoint(ckpt_path, {
                "shape": model.shape(), "config": cfg.to_json(), "epoch": epoch,
                "model": model.state_dict(), "opt": opt.state_dict(),
                "opt_d": opt_d.state_dict(), "B": B, "H": H, "gen": gen.get_state(),
                "rng": rng_states(), "best_epoch": best_epoch, "best_map": best_map,
                "best_state": best_state, "history": history, "top_map": top_map,
                "top_se": top_se, "splits": {k: v.tolist() for k, v in splits.items()},
                "robust": robust.state_dict()})
            saved_at = time.perf_counter()

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    weights = robust.final_weights()
    disagreement = None
    if weights is not None:
        h_img = encode(model.image, x)
        h_txt = encode(model.text, t.reshape(-1, t.shape[-1])).reshape(len(x), t.shape[1], -1)
        disagreement = torch.stack([code_disagreement(h_img, h_txt[:, c])
                                    for c in range(t.shape[1])]).mean(0).cpu().numpy()
    return TrainResult(model, cfg, splits, best_epoch, best_map, history,
                       time.perf_counter() - t_start, noise_mask, weights, disagreement,
                       epoch_seconds)


def cpu_has_bf16() -> bool:
    try:  # oneDNN's own check (AVX512-BF16 / AMX); a private op, so absent means "unknown"
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def checkpoint_shape(ck: dict) -> dict:
    """The model shape a checkpoint was trained for. Checkpoints written before input
    normalisation existed fed raw embeddings."""
    return {"input_norm": "none", **ck["shape"]}


def load_model(path: Path, device: str = "cpu") -> tuple[DUCH, dict]:
    """The validation-selected model of a checkpoint (the last state if none was selected),
    verified against the sha256 in the run.json beside it and loaded without unpickling code."""
    ck = load_checkpoint(path, device)
    s = checkpoint_shape(ck)
    model = DUCH(s["image_dim"], s["text_dim"], s["bits"], s["hidden"],
                 s["input_norm"]).to(device)
    model.load_state_dict(ck["best_state"] if ck.get("best_state") is not None else ck["model"])
    model.eval()
    return model, ck
