"""The two unsupervised baselines of the paper's Tables IV/V, on duchkit's data and networks.

    cfg = TrainConfig(bits=64, method="djsrh")        # or "jdsh"
    result = train(cfg, features, run_dir)            # hashing.train.train dispatches here

Both methods build a similarity matrix S of each batch from the fixed input embeddings and fit
the cosine similarities of the batch's relaxed codes to it. What they share with DUCH, so that
a comparison measures the objective and nothing else: the features, the split and injected
noise (hashing.train.training_data), the hashing networks (hashing.model.HashMLP, the DUCH
module with its discriminator left untrained, so a run folder, checkpoint, `duchkit evaluate` and
`duchkit search` are a DUCH run's), the optimiser and its schedule (TrainConfig: Adam, lr, decay,
batch size, epochs), a random caption per image each epoch, and model selection on the
validation slice. The published methods differ there: VGG/AlexNet or ResNet/BERT features, SGD
(lr 0.001 image / 0.01 text, momentum 0.9), batch 32, and the last or best *test* epoch.

DJSRH (Su, Zhong, Zhang, "Deep Joint-Semantics Reconstructing Hashing for Large-Scale
Unsupervised Cross-Modal Retrieval", ICCV 2019), as its public code computes it, per batch of m:
    S_I = 2 F_I F_I^T - 1,  S_T = 2 F_T F_T^T - 1            (F: unit-norm input embeddings)
    S~  = beta S_I + (1 - beta) S_T
    S   = mu ((1 - eta) S~ + eta S~ S~ / m)
    L   = lambda_I ||cos(B_I, B_I) - S||^2 + ||cos(B_I, B_T) - S||^2 + lambda_T ||cos(B_T, B_T) - S||^2
with B = tanh(a h), a = sqrt(epoch + 1) (epoch from 0), the norms mean squared errors over the
m x m entries. Defaults: mu 1.5, eta 0.4, lambda_I = lambda_T = 0.1 (the code's, every dataset);
beta 0.6 (its NUS-WIDE value; 0.9 on MIRFlickr, 0.3 on WIKI: an assumption for RS archives).

JDSH (Liu, Qian, Zhang, Zhang, Li, "Joint-modal Distribution-based Similarity Hashing for
Large-scale Unsupervised Deep Cross-modal Retrieval", SIGIR 2020), after its public code and the
remote-sensing port of it:
    S_high = norm_rows(S_I) norm_rows(S_T)^T                 (the joint-modal term)
    S_ = w_I S_I + w_T S_T + w_J (S_high + S_high^T) / 2
then Distribution-based Similarity Decision and Weighting (DSDW): entries below a left threshold
(clearly dissimilar) become (1 + l_L exp(s_min - s)) s, entries above a right one (clearly
similar) (1 + l_R exp(s - s_max)) s, the rest stay; S = mu S_. The thresholds come from the
distribution of S_ (off-diagonal entries, one pass of training batches before epoch 1, as the
remote-sensing port fits them): its mode m (the fullest of 100 histogram bins), a Gaussian fitted
to the part below m mirrored about m (scale sigma), a Laplace one to the part above (scale b):
left = m - k_L sigma, right = m + k_R b; s_min, s_max are the extremes of S_. The loss:
    L = intra (||cos(B_I, B_I) - S||^2 + ||cos(B_T, B_T) - S||^2)
        + ||cos(B_I, B_T) - S||^2 + ||cos(B_T, B_I) - S||^2 - mean_i cos(B_I,i, B_T,i)
Assumed (the configuration values were not checked): w_I = w_T = w_J = 1/3, mu 1.5,
intra 0.1 (DJSRH's lambda), k_L = k_R = 1, l_L = l_R = 0.1. Ours also caps each exponent at 0,
so no weight exceeds 1 + l, also for a batch entry beyond the fitted extremes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from duchkit.hashing.checkpoint import CHECKPOINT, checkpoint_due, load_checkpoint, rng_states, \
    save_checkpoint, set_rng_states
from duchkit.hashing.config import TrainConfig
from duchkit.hashing.data import Features
from duchkit.hashing.model import DUCH, HashMLP


def feature_affinities(f_img: torch.Tensor, f_txt: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """S_I, S_T [m, m]: 2 cos - 1 of the batch's input embeddings (both methods' first step)."""
    a, b = F.normalize(f_img.float(), dim=1), F.normalize(f_txt.float(), dim=1)
    return 2 * a @ a.T - 1, 2 * b @ b.T - 1


def code_cosines(b_img: torch.Tensor, b_txt: torch.Tensor) -> dict[str, torch.Tensor]:
    a, b = F.normalize(b_img, dim=1), F.normalize(b_txt, dim=1)
    return {"image_image": a @ a.T, "image_text": a @ b.T, "text_text": b @ b.T,
            "paired": (a * b).sum(1).mean()}


@dataclass(frozen=True)
class DJSRH:
    beta: float = 0.6  # weight of the image affinity in S~
    eta: float = 0.4  # share of the second-order term S~ S~ / m
    mu: float = 1.5  # scale of the target
    lambda_image: float = 0.1  # weight of the image-image reconstruction
    lambda_text: float = 0.1  # weight of the text-text reconstruction

    def target(self, f_img: torch.Tensor, f_txt: torch.Tensor) -> torch.Tensor:
        s_i, s_t = feature_affinities(f_img, f_txt)
        s = self.beta * s_i + (1 - self.beta) * s_t
        return self.mu * ((1 - self.eta) * s + self.eta * (s @ s) / len(s))

    def losses(self, b_img: torch.Tensor, b_txt: torch.Tensor,
               target: torch.Tensor) -> dict[str, torch.Tensor]:
        c = code_cosines(b_img, b_txt)
        terms = {k: F.mse_loss(c[k], target) for k in ("image_image", "image_text", "text_text")}
        terms["total"] = (self.lambda_image * terms["image_image"] + terms["image_text"]
                          + self.lambda_text * terms["text_text"])
        return terms


@dataclass(frozen=True)
class Thresholds:
    """DSDW's decision points, fitted once on the training data (JDSH.fit)."""
    mode: float
    left: float
    right: float
    s_min: float
    s_max: float


@dataclass(frozen=True)
class JDSH:
    w_image: float = 1 / 3  # weights of S_I, S_T and the joint-modal term in S_
    w_text: float = 1 / 3
    w_joint: float = 1 / 3
    mu: float = 1.5
    intra: float = 0.1  # weight of the image-image and text-text reconstructions
    k_left: float = 1.0  # left threshold: mode - k_left x the Gaussian scale
    k_right: float = 1.0  # right threshold: mode + k_right x the Laplace scale
    l_left: float = 0.1  # largest extra weight of a dissimilar pair
    l_right: float = 0.1  # largest extra weight of a similar pair
    bins: int = 100

    def joint(self, f_img: torch.Tensor, f_txt: torch.Tensor) -> torch.Tensor:
        """S_, the joint-modal similarity before DSDW."""
        s_i, s_t = feature_affinities(f_img, f_txt)
        high = F.normalize(s_i, dim=1) @ F.normalize(s_t, dim=1).T
        return self.w_image * s_i + self.w_text * s_t + self.w_joint * (high + high.T) / 2

    def fit(self, values: torch.Tensor) -> Thresholds:
        """The thresholds from off-diagonal values of S_ (see the module text)."""
        v = values.double()
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            return Thresholds(lo, lo, hi, lo, hi)
        counts = torch.histc(v, self.bins, lo, hi)
        width = (hi - lo) / self.bins
        mode = lo + (int(counts.argmax()) + 0.5) * width
        below, above = v[v < mode], v[v > mode]
        sigma = float((below - mode).pow(2).mean().sqrt()) if len(below) else 0.0
        b = float((above - mode).mean()) if len(above) else 0.0
        return Thresholds(mode, mode - self.k_left * sigma, mode + self.k_right * b, lo, hi)

    def target(self, f_img: torch.Tensor, f_txt: torch.Tensor,
               th: Thresholds) -> torch.Tensor:
        s = self.joint(f_img, f_txt)
        low = (1 + self.l_left * torch.exp((th.s_min - s).clamp(max=0))) * s
        high = (1 + self.l_right * torch.exp((s - th.s_max).clamp(max=0))) * s
        s = torch.where(s < th.left, low, torch.where(s > th.right, high, s))
        return self.mu * s

    def losses(self, b_img: torch.Tensor, b_txt: torch.Tensor,
               target: torch.Tensor) -> dict[str, torch.Tensor]:
        c = code_cosines(b_img, b_txt)
        terms = {k: F.mse_loss(c[k], target) for k in ("image_image", "image_text", "text_text")}
        terms["paired"] = c["paired"]
        # ||cos(B_T, B_I) - S||^2 equals the image-text term: S is symmetric
        terms["total"] = (self.intra * (terms["image_image"] + terms["text_text"])
                          + 2 * terms["image_text"] - terms["paired"])
        return terms


BASELINES = {"djsrh": DJSRH(), "jdsh": JDSH()}
TERMS = {"djsrh": ("total", "image_image", "image_text", "text_text"),
         "jdsh": ("total", "image_image", "image_text", "text_text", "paired")}


def pre_activation(net: HashMLP) -> Callable[[torch.Tensor], torch.Tensor]:
    """net's output before its final tanh (input normalisation included), so the baselines can
    train tanh(a h): sign(tanh(a h)) = sign(tanh(h)), so the codes `encode` gives are theirs."""
    if not isinstance(net.net[-1], torch.nn.Tanh):
        raise TypeError("the hashing network no longer ends in tanh")
    body = net.net[:-1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        return body(F.normalize(x, dim=-1) if net.input_norm == "l2" else x)

    return forward


def fit_thresholds(method: JDSH, x: torch.Tensor, t: torch.Tensor, batch_size: int,
                   gen: torch.Generator) -> Thresholds:
    """One pass of random training batches (a random caption each), as training sees them."""
    n = len(x)
    perm = torch.randperm(n, generator=gen, device=x.device)
    caption = torch.randint(0, t.shape[1], (n,), generator=gen, device=x.device)
    values = []
    for idx in perm.split(batch_size):
        if len(idx) < 2:
            continue
        s = method.joint(x[idx], t[idx, caption[idx]])
        values.append(s[~torch.eye(len(idx), dtype=torch.bool, device=s.device)])
    return method.fit(torch.cat(values))


def train_baseline(cfg: TrainConfig, feats: Features, run_dir: Path | None = None,
                   resume: bool = False, log: Callable[[str], None] = print,
                   stop_after: int | None = None):
    """DJSRH or JDSH (`cfg.method`) on the train split of `feats`: hashing.train.train's
    contract (TrainResult, checkpoint.pt, resume, validation selection)."""
    from duchkit.hashing.train import TrainResult, check_resumable, seed_everything, \
        select_epoch, training_data, validation_map

    cfg.validate()
    method, names = BASELINES[cfg.method], TERMS[cfg.method]
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    data = training_data(cfg, feats, device, log)
    feats, splits, x, t = data.feats, data.splits, data.x, data.t
    n, n_caps = len(splits["train"]), t.shape[1]

    # the DUCH module: the same networks and checkpoint shape; its discriminator stays unused
    model = DUCH(feats.image_dim, feats.text_dim, cfg.bits, cfg.hidden,
                 cfg.input_norm).to(device)
    adam = torch.optim.AdamW if cfg.weight_decay_mode == "decoupled" else torch.optim.Adam
    opt = adam(model.hash_parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
               weight_decay=cfg.weight_decay, fused=True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    start_epoch, best_epoch, best_map, best_state, history = 0, -1, -1.0, None, []
    top_map, top_se, thresholds = -1.0, 0.0, None

    ckpt_path = Path(run_dir) / CHECKPOINT if run_dir else None
    if resume and ckpt_path and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, device)
        check_resumable(ck, ckpt_path, model, cfg)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"].to(gen.get_state().device))
        set_rng_states(ck["rng"])
        start_epoch, best_epoch, best_map = ck["epoch"] + 1, ck["best_epoch"], ck["best_map"]
        best_state, history = ck["best_state"], ck["history"]
        top_map, top_se = ck["top_map"], ck["top_se"]
        thresholds = Thresholds(**ck["thresholds"]) if ck.get("thresholds") else None
        log(f"resumed from {ckpt_path} after epoch {ck['epoch'] + 1}")
    elif isinstance(method, JDSH):
        with torch.no_grad():
            thresholds = fit_thresholds(method, x, t, cfg.batch_size, gen)
        log(json.dumps({"jdsh_thresholds": {k: round(v, 5)
                                            for k, v in asdict(thresholds).items()}}))

    image_net, text_net = pre_activation(model.image), pre_activation(model.text)
    if cfg.compile:
        image_net, text_net = torch.compile(image_net), torch.compile(text_net)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)

    saved_at = time.perf_counter()  # of the last checkpoint; this call's start counts as one
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        lr_scale = cfg.lr_decay ** (epoch // cfg.lr_decay_every)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_scale
        model.train()
        scale = math.sqrt(epoch + 1)  # tanh(a h) tends to sign(h) as training goes on
        perm = torch.randperm(n, generator=gen, device=device)
        caption = torch.randint(0, n_caps, (n,), generator=gen, device=device)
        sums = torch.zeros(len(names), device=device)
        for idx in perm.split(cfg.batch_size):
            if len(idx) < 2:  # batch-norm needs two samples
                continue
            f_img, f_txt = x[idx], t[idx, caption[idx]]
            with amp:
                b_img = torch.tanh(scale * image_net(f_img).float())
                b_txt = torch.tanh(scale * text_net(f_txt).float())
            with torch.no_grad():
                target = (method.target(f_img, f_txt, thresholds) if thresholds is not None
                          else method.target(f_img, f_txt))
            terms = method.losses(b_img, b_txt, target)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            sums += torch.stack([terms[k].detach() for k in names])

        row = dict(zip(names, sums.tolist()))
        row.update(epoch=epoch + 1, lr=cfg.lr * lr_scale, code_scale=scale)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            val, se = validation_map(model, data.val_query, data.val_database,
                                     cfg.map_k).tolist()
            row["val_map"], row["val_se"] = val, se
            top_map, top_se, keep = select_epoch(val, se, top_map, top_se, cfg.selection_se)
            if keep:
                best_map, best_epoch = val, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(row)
        log(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}))
        if ckpt_path and checkpoint_due(epoch, cfg.epochs, cfg.checkpoint_every,
                                        cfg.checkpoint_seconds, time.perf_counter() - saved_at):
            save_checkpoint(ckpt_path, {
                "shape": model.shape(), "config": cfg.to_json(), "epoch": epoch,
                "model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                "rng": rng_states(), "best_epoch": best_epoch, "best_map": best_map,
                "best_state": best_state, "history": history, "top_map": top_map,
                "top_se": top_se, "splits": {k: v.tolist() for k, v in splits.items()},
                "thresholds": asdict(thresholds) if thresholds is not None else None})
            saved_at = time.perf_counter()

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, cfg, splits, best_epoch, best_map, history,
                       time.perf_counter() - t_start, data.noise_mask, None)
