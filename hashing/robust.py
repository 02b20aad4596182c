"""How much each training pair may steer the codes when some captions belong to another image.

Every mode fills the same slot: a weight w_i in [0, 1] per training image that multiplies that
pair's inter-modal NT-Xent terms (hashing.losses.nt_xent `weights`).
- chnr (CHNR, arXiv 2202.13117): a noise detector D, an MLP on the concatenated input embeddings
  [x; y], meta-trained in phase 1 on a small clean subset (real pairs (x, y) and (x', y) against
  fake ones, an image with the caption of an image of another class), with a gradient penalty.
  In phase 2 it is frozen and scores every pair once (in eval mode: no dropout), w = sigmoid(D):
  "normal" w, "exp" w^3, "discrete" 1[w > t], t the midpoint of the last meta epoch's mean real
  and fake scores.
- gmm (label-free, after NCR, NeurIPS 2021): each epoch, the disagreement 1 - cos(image code,
  caption code) of every training pair is split by a two-component Gaussian mixture whose
  wrong-caption component is anchored to the disagreement of mismatched pairs; w is the
  posterior of the clean component. Needs neither labels nor a clean subset; the codes it reads
  are the ones the epoch computed anyway.
- oracle: w = the true clean mask of injected noise, an upper bound for diagnostics.
- ptc: DUCH pre-trained on the clean subset, then every pair weighs 1 (CHNR's baseline).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class NoiseDetector(nn.Module):
    """[x; y] -> logit of "this caption belongs to this image": 3 x (Linear(d, d), ReLU,
    Dropout 0.2) -> Linear(d, 1), d = dim(x) + dim(y), on the input embeddings as they are
    (CHNR's detector; unit-norm inputs left the gradient-penalised detector almost no room to
    separate pairs on UCM features: ROC-AUC .60 after 75 epochs)."""

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.2):
        super().__init__()
        d = image_dim + text_dim
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Linear(d, d), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers, nn.Linear(d, 1))

    @staticmethod
    def pair(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y], dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


def detector_step(det: NoiseDetector, opt: torch.optim.Optimizer, real: torch.Tensor,
                  fake: torch.Tensor, gp_weight: float = 10.0) -> tuple[torch.Tensor, ...]:
    """One meta-learning step: -log s(D(real)) - log(1 - s(D(fake))) plus a gradient penalty
    on random interpolates of real and fake pairs. Returns (loss, mean real score, mean fake
    score) as detached tensors (no host sync)."""
    det.train()
    d_real, d_fake = det(real), det(fake)
    loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    n = min(len(real), len(fake))
    eps = torch.rand(n, 1, device=real.device, dtype=real.dtype)
    mix = (eps * real[:n] + (1 - eps) * fake[:n]).requires_grad_(True)
    grad, = torch.autograd.grad(det(mix).sum(), mix, create_graph=True)
    loss = loss + gp_weight * ((grad.norm(dim=1) - 1) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return (loss.detach(), torch.sigmoid(d_real).mean().detach(),
            torch.sigmoid(d_fake).mean().detach())


def fake_captions(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each row, another row whose class differs (any other row where labels are unknown or
    a class has every row): the caption a fake pair borrows."""
    n = len(labels)
    order = torch.randint(0, n, (n,), generator=gen, device=labels.device)
    if n < 2:
        return order
    rows = torch.arange(n, device=labels.device)
    for _ in range(8):  # resample the rows that hit their own class; a few rounds suffice
        same = ((labels[order] == labels) & (labels >= 0)) | (order == rows)
        redraw = torch.randint(0, n, (n,), generator=gen, device=labels.device)
        order = torch.where(same, redraw, order)
    return order


@torch.no_grad()
def detector_scores(det: NoiseDetector, x: torch.Tensor, y: torch.Tensor,
                    batch: int = 8192) -> torch.Tensor:
    """sigmoid(D([x; y])) per row, in eval mode (dropout off: a weight is a score, not a draw)."""
    was = det.training
    det.eval()
    out = torch.cat([torch.sigmoid(det(det.pair(x[i:i + batch], y[i:i + batch])))
                     for i in range(0, len(x), batch)])
    det.train(was)
    return out


def chnr_weights(scores: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    if mode == "normal":
        return scores
    if mode == "exp":
        return scores ** 3
    if mode == "discrete":
        return (scores > threshold).to(scores.dtype)
    raise ValueError(f"weight mode must be normal, exp or discrete, not {mode!r}")


def gmm_clean_posterior(d: torch.Tensor, d_random: torch.Tensor | None = None,
                        iters: int = 30) -> torch.Tensor:
    """Posterior of the clean component of a two-component 1-D Gaussian mixture fitted to the
    disagreements `d` by EM. With `d_random` (the disagreements of mismatched pairs, an image
    with another image's caption), the wrong-caption component is anchored to them: a wrong
    pair looks like a random one, so only the clean component and the mixing share are fitted,
    and an archive without wrong captions gets a share near 0 and weights near 1 (an unanchored
    mixture splits any data in two). Small, on the device, no host sync."""
    d = d.float()
    var0 = d.var().clamp_min(1e-6)
    if d_random is None:
        mu = torch.stack([torch.quantile(d, 0.25), torch.quantile(d, 0.75)])
        var = var0.expand(2).clone()
    else:
        mu = torch.stack([torch.quantile(d, 0.25), d_random.float().mean()])
        var = torch.stack([var0, d_random.float().var().clamp_min(1e-6)])
    pi = d.new_tensor([0.5, 0.5])
    for _ in range(iters):
        logp = (-0.5 * (d[:, None] - mu) ** 2 / var - 0.5 * torch.log(2 * torch.pi * var)
                + torch.log(pi.clamp_min(1e-6)))
        r = torch.softmax(logp, dim=1)
        nk = r.sum(0).clamp_min(1e-6)
        new_mu = (r * d[:, None]).sum(0) / nk
        new_var = ((r * (d[:, None] - new_mu) ** 2).sum(0) / nk).clamp_min(1e-6)
        if d_random is None:
            mu, var = new_mu, new_var
        else:  # the wrong-caption component stays where random pairs are
            mu = torch.stack([new_mu[0], mu[1]])
            var = torch.stack([new_var[0], var[1]])
        pi = nk / len(d)
    clean = 0 if d_random is not None else int(torch.argmin(mu))
    return r[:, clean]


def code_disagreement(h_image: torch.Tensor, h_text: torch.Tensor) -> torch.Tensor:
    """1 - cos(image code, caption code) per pair: high for a caption of another image."""
    return 1 - F.cosine_similarity(h_image, h_text, dim=1)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC-AUC of `scores` for `positive` (ties count half); nan without both classes."""
    scores, positive = scores.double().cpu(), positive.bool().cpu()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    s = scores[order]  # average the ranks of ties
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class Robustness:
    """The per-pair weights of one training run and what produces them, for the loop in
    hashing.train: chnr's phase 1 (`meta_epochs`, on `clean_rows`), the scoring at the start
    of phase 2, gmm's refit after each epoch, and the diagnostics against injected noise."""

    def __init__(self, cfg, feats, noisy_train: np.ndarray, x: torch.Tensor, n: int,
                 device: torch.device, log):
        self.mode, self.cfg, self.x, self.log = cfg.robust, cfg, x, log
        # chnr and ptc begin with a phase on the clean subset (ptc: DUCH pre-trained on it, then
        # every pair weighs 1: CHNR's own baseline)
        self.meta_epochs = cfg.meta_epochs if self.mode in ("chnr", "ptc") else 0
        self.weights = torch.ones(n, device=device)
        self.noisy = torch.as_tensor(noisy_train, device=device)
        self.known = cfg.noise_rate > 0  # the truth is known only for injected noise
        self.scored = self.mode not in ("chnr", "ptc")
        self.threshold = 0.5
        self._sums = torch.zeros(3, device=device)  # real score, fake score, steps
        self._last = torch.tensor([1.0, 0.0], device=device)
        if self.mode == "oracle":
            if not self.known:
                log("warning: robust oracle without injected noise: every weight is 1")
            self.weights = (~self.noisy).float()
        self.detector = None
        if self.meta_epochs:
            k = int(round(cfg.clean_fraction * n))
            pool = np.flatnonzero(~noisy_train) if self.known else np.arange(n)
            if k < 2 or k > len(pool):
                raise ValueError(f"clean_fraction {cfg.clean_fraction} of {n} training images "
                                 f"is {k} images; {len(pool)} are clean: choose another share")
            rows = np.sort(np.random.default_rng([cfg.seed, 11]).choice(pool, k, replace=False))
            self.clean_rows = torch.as_tensor(rows, device=device)
        if self.mode == "chnr":
            self.detector = NoiseDetector(feats.image_dim, feats.text_dim).to(device)
            self.opt = torch.optim.AdamW(self.detector.parameters(), lr=cfg.detector_lr,
                                         betas=(0.5, 0.9), weight_decay=1e-3)
        else:
            self.clean_rows = None

    # ---- chnr
    def detector_step(self, idx, x, x_aug, t, view, caption, labels, gen) -> None:
        det = self.detector
        if det is None:  # ptc: no detector, the phase pre-trains the hashing networks only
            return
        cap = t[idx, caption[idx]]
        real = torch.cat([det.pair(x[idx], cap), det.pair(x_aug[idx, view[idx]], cap)])
        other = idx[fake_captions(labels[idx], gen)]
        fake = det.pair(x[idx], t[other, caption[other]])
        _, s_real, s_fake = detector_step(det, self.opt, real, fake, self.cfg.detector_gp)
        self._sums += torch.stack([s_real, s_fake, s_real.new_ones(())])

    def score_pairs(self, t: torch.Tensor) -> None:
        """Phase 2 begins: every pair scored once by the frozen detector (mean over the
        image's captions), and the threshold set from the last meta epoch's scores."""
        if self.detector is None:  # ptc: every pair weighs 1 from here on
            self.scored = True
            return
        n, c, d = t.shape
        scores = detector_scores(self.detector, self.x.repeat_interleave(c, 0), t.reshape(-1, d))
        scores = scores.reshape(n, c).mean(1)
        self.threshold = float(self._last.mean())
        self.weights = chnr_weights(scores, self.cfg.weight_mode, self.threshold)
        self.scored = True
        self.log(f"chnr: phase 2, pairs weighed by the detector ({self.cfg.weight_mode}, "
                 f"threshold {self.threshold:.3f})")

    # ---- every mode
    def batch_weights(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None if self.mode == "none" else self.weights[idx]

    def end_of_epoch(self, phase_epoch: int, h_image: torch.Tensor, h_text: torch.Tensor) -> None:
        if self.mode == "gmm" and phase_epoch + 1 >= self.cfg.gmm_warmup:
            n = len(h_image)
            shift = 1 + (phase_epoch * 7919) % max(1, n - 1)  # another image's caption, seeded
            mismatched = h_text[(torch.arange(n, device=h_text.device) + shift) % n]
            self.weights = gmm_clean_posterior(code_disagreement(h_image, h_text),
                                               code_disagreement(h_image, mismatched))

    def diagnostics(self, meta: bool) -> dict:
        if self.mode == "none":
            return {}
        if meta and self.detector is None:
            return {"phase": "meta"}
        if meta:
            steps = self._sums[2].clamp_min(1)
            self._last = self._sums[:2] / steps
            self._sums.zero_()
            real, fake = self._last.tolist()
            return {"phase": "meta", "detector_real": real, "detector_fake": fake}
        row = {"phase": "main", "mean_weight": float(self.weights.mean())}
        if self.known and self.noisy.any() and (~self.noisy).any():
            cut = self.threshold if self.cfg.weight_mode == "discrete" else 0.5
            row["weight_auc"] = roc_auc(self.weights, ~self.noisy)
            row["noisy_below_threshold"] = float((self.weights[self.noisy] < cut).float().mean())
        return row

    def final_weights(self) -> np.ndarray | None:
        return None if self.mode == "none" else self.weights.detach().cpu().numpy()

    # ---- checkpoints: tensors and plain data only
    def state_dict(self) -> dict:
        state = {"weights": self.weights, "scored": self.scored, "threshold": self.threshold,
                 "sums": self._sums, "last": self._last}
        if self.detector is not None:
            state.update(detector=self.detector.state_dict(), opt=self.opt.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.weights = state["weights"]
        self.scored, self.threshold = state["scored"], state["threshold"]
        self._sums, self._last = state["sums"], state["last"]
        if self.detector is not None:
            self.detector.load_state_dict(state["detector"])
            self.opt.load_state_dict(state["opt"])
