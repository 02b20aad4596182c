"""Class-structured synthetic embeddings, for tests and benchmarks.

Each class has a latent centre; an image is its centre plus noise, seen through a fixed random
linear "image encoder"; its captions are the same latent point plus caption noise through a
"text encoder". Augmented views add a little more noise. Retrieval by class is then learnable
but not trivial (noise hides the class in the raw features), so mAP tells a trained network from
an untrained one.
"""
from __future__ import annotations

import numpy as np
import torch

from duchkit.hashing.data import Features


def class_structured(n_images: int = 400, n_classes: int = 8, image_dim: int = 64,
                     text_dim: int = 48, captions: int = 5, image_views: int = 1,
                     latent: int = 16, noise: float = 1.0, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    labels = np.arange(n_images) % n_classes
    centres = rng.normal(size=(n_classes, latent)) * 1.5
    z = centres[labels] + noise * rng.normal(size=(n_images, latent))
    to_image = rng.normal(size=(latent, image_dim)) / np.sqrt(latent)
    to_text = rng.normal(size=(latent, text_dim)) / np.sqrt(latent)

    def view(base, proj, scale, *shape):
        return (base + scale * rng.normal(size=shape + (latent,))) @ proj

    image = view(z, to_image, 0.2, n_images)
    image_aug = np.stack([view(z, to_image, 0.4, n_images) for _ in range(image_views)], 1)
    zc = z[:, None] + 0.5 * rng.normal(size=(n_images, captions, latent))
    text = view(zc, to_text, 0.1, n_images, captions)
    text_aug = view(zc, to_text, 0.4, n_images, captions)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return Features(f(image), f(image_aug), f(text), f(text_aug), torch.as_tensor(labels))
