"""Wrong captions on purpose: the noisy image-text correspondences CHNR is about.

    noisy, mask = inject_noise(features, train_idx, rate=0.3, mode="cross-class", seed=0)

Exactly round(rate x len(train_idx)) training images get the captions of another image: all of
their captions and the augmented variants of those captions, so no view of the image keeps a
caption that belongs to it. Only `train_idx` rows change; query and retrieval items stay clean.
- cross-class: the donor is a training image of another class (needs class labels), as in the
  CHNR protocol;
- shuffle: the chosen images' captions are permuted among themselves with no image keeping its
  own (a derangement): no labels needed.
The draw is seeded and exact (not a per-image coin flip), and `mask` marks the changed images.
"""
from __future__ import annotations

import numpy as np
import torch

from duchkit.hashing.data import Features


def noisy_count(rate: float, n: int) -> int:
    return int(round(rate * n))


def inject_noise(feats: Features, train_idx: np.ndarray, rate: float, mode: str, seed: int
                 ) -> tuple[Features, np.ndarray]:
    """Features with wrong captions for round(rate x len(train_idx)) training images, and the
    boolean mask [N] of the images changed."""
    train_idx = np.asarray(train_idx)
    mask = np.zeros(feats.n, bool)
    k = noisy_count(rate, len(train_idx))
    if k == 0:
        return feats, mask
    rng = np.random.default_rng([seed, 7])
    chosen = np.sort(rng.choice(train_idx, k, replace=False))
    if mode == "cross-class":
        labels = feats.labels.numpy()
        if (labels[train_idx] < 0).any():
            raise ValueError("noise_mode cross-class needs class labels, and some training "
                             "images have none: use noise_mode shuffle")
        donors = np.empty(k, np.int64)
        for j, i in enumerate(chosen):
            other = train_idx[labels[train_idx] != labels[i]]
            if len(other) == 0:
                raise ValueError("noise_mode cross-class needs at least two classes among the "
                                 "training images")
            donors[j] = other[rng.integers(len(other))]
    elif mode == "shuffle":
        if k < 2:
            raise ValueError(f"noise_mode shuffle needs at least 2 noisy images (rate {rate} of "
                             f"{len(train_idx)} training images gives {k})")
        perm = np.arange(k)  # Sattolo's shuffle: one cycle, so nobody keeps its own captions
        for i in range(k - 1, 0, -1):
            j = int(rng.integers(i))
            perm[i], perm[j] = perm[j], perm[i]
        donors = chosen[perm]
    else:
        raise ValueError(f"noise_mode must be cross-class or shuffle, not {mode!r}")
    text, text_aug = feats.text.clone(), feats.text_aug.clone()
    rows, src = torch.as_tensor(chosen), torch.as_tensor(donors)
    text[rows], text_aug[rows] = feats.text[src], feats.text_aug[src]
    mask[chosen] = True
    return Features(feats.image, feats.image_aug, text, text_aug, feats.labels), mask
