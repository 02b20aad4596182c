"""The DUCH objectives (paper eq. 1-9), each a function of code tensors.

Every loss is computed per sample and then reduced: `"mean"` (default) averages over the batch,
so alpha/beta/gamma mean the same thing at any batch size; `"sum"` adds over the batch as the
authors' code does (at batch 256 a summed term is 256x the mean one), for comparison only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from duchkit.hashing.config import REDUCTIONS


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS} (got {reduction!r})")


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = 1.0,
            reduction: str = "mean", weights: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy between paired rows of `a` and `b` (eq. 1-3).

    For each of the 2M anchors (every row of a and of b) the positive is its partner in the other
    view; the negatives are every other row of both views (the anchor itself excluded). With
    S(u, v) = exp(cos(u, v) / tau), anchor j of `a` costs
        -log S(a_j, b_j) / (sum_{k != j} S(a_j, a_k) + sum_k S(a_j, b_k)),
    computed as a cross-entropy over logits cos / tau, so it is exact for any tau > 0.
    `weights` [M] scale both anchor terms of pair j (hashing.robust: a pair judged wrong weighs
    less); the pair's rows stay negatives for the other anchors.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0 (got {tau})")
    m = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = ((z @ z.T) / tau).fill_diagonal_(float("-inf"))
    # made on the device: a target built on the host and copied over is a pageable copy, which
    # waits for the GPU's queue, three times a training step (the trainer is host-bound there)
    target = torch.arange(2 * m, device=a.device).roll(m)
    per_anchor = F.cross_entropy(logits, target, reduction="none")
    if weights is not None:
        per_anchor = per_anchor * torch.cat([weights, weights])
    return reduce(per_anchor, reduction)


def discriminator_loss(d_text: torch.Tensor, d_image: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """Eq. 5 for D: text codes are "real" (1), image codes are "fake" (0). Inputs are logits of
    detached codes, so only D learns from this."""
    real = F.binary_cross_entropy_with_logits(d_text, torch.ones_like(d_text), reduction="none")
    fake = F.binary_cross_entropy_with_logits(d_image, torch.zeros_like(d_image), reduction="none")
    return reduce(real, reduction) + reduce(fake, reduction)


def generator_adversarial_loss(d_image: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The hashing networks' side of eq. 5: make image codes pass as text codes,
    -log D(f(x)) (the non-saturating form). `d_image` must carry the image branch's graph: that
    is how the image hashing network receives the adversarial gradient."""
    return reduce(F.binary_cross_entropy_with_logits(d_image, torch.ones_like(d_image),
                                                     reduction="none"), reduction)


def quantisation_loss(codes: list[torch.Tensor], target: torch.Tensor,
                      reduction: str = "mean") -> torch.Tensor:
    """Eq. 6: sum over the code sets of ||B - H||^2, per sample summed over bits."""
    return sum(reduce((target - h).pow(2).sum(1), reduction) for h in codes)


def bit_balance_loss(codes: list[torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Eq. 7: sum over the code sets of ||H 1||^2: each sample's bits should sum to zero."""
    return sum(reduce(h.sum(1).pow(2), reduction) for h in codes)


def binary_target(h_img: torch.Tensor, h_img_aug: torch.Tensor, h_txt: torch.Tensor,
                  h_txt_aug: torch.Tensor) -> torch.Tensor:
    """Eq. 8: B = sign(((H_i + H_i')/2 + (H_t + H_t')/2) / 2), with sign(0) = +1 so B stays in
    {-1, +1} (torch.sign would give 0)."""
    mean = ((h_img + h_img_aug) / 2 + (h_txt + h_txt_aug) / 2) / 2
    return torch.where(mean >= 0, 1.0, -1.0).to(h_img.dtype)


@dataclass(frozen=True)
class LossWeights:
    """Eq. 4 and 9 weights; zero switches a term off (Table III ablations)."""

    alpha: float = 0.01  # adversarial
    beta: float = 0.001  # quantisation
    gamma: float = 0.01  # bit balance
    lambda_image: float = 1.0  # lambda1: image vs augmented image
    lambda_text: float = 1.0  # lambda2: caption vs augmented caption
    tau: float = 1.0
    reduction: str = "mean"


def hashing_losses(h_img, h_img_aug, h_txt, h_txt_aug, b_target, d_image_logits,
                   w: LossWeights, pair_weights: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """All terms of eq. 9 the hashing networks minimise, unweighted, plus the weighted total.

    A term whose weight is zero is not computed at all (so an ablation costs nothing and cannot
    leak gradient). `pair_weights` [M] weigh each pair's inter-modal term (hashing.robust); the
    intra-modal terms compare an item with its own augmentation, which a wrong caption does not
    make wrong, so they stay unweighted."""
    zero = h_img.new_zeros(())
    terms = {"inter": nt_xent(h_img, h_txt, w.tau, w.reduction, pair_weights)}
    terms["intra_image"] = (nt_xent(h_img, h_img_aug, w.tau, w.reduction)
                            if w.lambda_image else zero)
    terms["intra_text"] = (nt_xent(h_txt, h_txt_aug, w.tau, w.reduction)
                           if w.lambda_text else zero)
    codes = [h_img, h_img_aug, h_txt, h_txt_aug]
    terms["adversarial"] = (generator_adversarial_loss(d_image_logits, w.reduction)
                            if w.alpha and d_image_logits is not None else zero)
    terms["quantisation"] = quantisation_loss(codes, b_target, w.reduction) if w.beta else zero
    terms["bit_balance"] = bit_balance_loss(codes, w.reduction) if w.gamma else zero
    terms["total"] = (terms["inter"] + w.lambda_image * terms["intra_image"]
                      + w.lambda_text * terms["intra_text"] + w.alpha * terms["adversarial"]
                      + w.beta * terms["quantisation"] + w.gamma * terms["bit_balance"])
    return terms
