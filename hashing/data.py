"""The trainer's inputs as tensors, and the seeded archive split.

`Features` holds one row per image: the clean image embedding, its augmented views, its captions
and their augmented versions, and an integer class label (-1 when unknown). The archive is split
by image (all captions of an image stay together), 50% train / 10% query / 40% retrieval as in the
paper; a validation slice for model selection is carved from the train part, so query and
retrieval items never influence training or the choice of epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Features:
    image: torch.Tensor  # [N, di]   clean view (view 0)
    image_aug: torch.Tensor  # [N, V, di]  augmented views 1..V
    text: torch.Tensor  # [N, C, dt]  the C captions of each image
    text_aug: torch.Tensor  # [N, C, dt] or [N, C, A, dt]: A augmented variants of each caption
    labels: torch.Tensor  # [N] int64 class ids, -1 = unknown

    def __post_init__(self):
        n = self.image.shape[0]
        if self.image_aug.dim() == 2:
            self.image_aug = self.image_aug[:, None]
        if self.text.dim() == 2:
            self.text = self.text[:, None]
        if self.text_aug.dim() == 2:
            self.text_aug = self.text_aug[:, None]
        shapes = {"image": self.image.shape, "image_aug": self.image_aug.shape,
                  "text": self.text.shape, "text_aug": self.text_aug.shape,
                  "labels": self.labels.shape}
        if any(s[0] != n for s in shapes.values()):
            raise ValueError(f"features disagree on the number of images: {shapes}")
        if self.image_aug.shape[2] != self.image.shape[1]:
            raise ValueError(f"augmented image embeddings have {self.image_aug.shape[2]} dims, "
                             f"clean ones {self.image.shape[1]}")
        aug = self.text_aug.shape
        if aug != self.text.shape and (len(aug) != 4 or aug[:2] != self.text.shape[:2]
                                       or aug[3] != self.text.shape[2]):
            raise ValueError(f"augmented caption embeddings {tuple(aug)} do not match caption "
                             f"embeddings {tuple(self.text.shape)} (one or A variants per "
                             "caption)")
        for name in ("image", "image_aug", "text", "text_aug"):
            t = getattr(self, name)
            if not torch.isfinite(t).all():
                bad = torch.nonzero(~torch.isfinite(t.reshape(n, -1)).all(1))[:5, 0].tolist()
                raise ValueError(f"{name} embeddings contain NaN/inf (image rows {bad})")

    @property
    def n(self) -> int:
        return self.image.shape[0]

    @property
    def image_dim(self) -> int:
        return self.image.shape[1]

    @property
    def text_dim(self) -> int:
        return self.text.shape[2]

    @property
    def captions(self) -> int:
        return self.text.shape[1]

    @property
    def variants(self) -> int:
        """Augmented variants per caption (the trainer draws one per image each epoch)."""
        return self.text_aug.shape[2] if self.text_aug.dim() == 4 else 1

    def one_caption_per_image(self, seed: int) -> "Features":
        """The paper's protocol: one seeded random caption per image, for training and
        evaluation alike."""
        pick = torch.as_tensor(paper_caption_choice(self.n, self.captions, seed))
        rows = torch.arange(self.n)
        return Features(self.image, self.image_aug, self.text[rows, pick][:, None],
                        self.text_aug[rows, pick][:, None], self.labels)


def paper_caption_choice(n: int, captions: int, seed: int) -> np.ndarray:
    """Which caption (0..captions-1) of each of n images the one-caption protocol uses."""
    return np.random.default_rng([seed, 1]).integers(0, captions, n)


def split_indices(n: int, seed: int, train: float = 0.5, query: float = 0.1,
                  val_of_train: float = 0.1) -> dict[str, np.ndarray]:
    """Seeded random split of n images into train / val / query / retrieval index arrays.

    train, query and retrieval (the rest) follow the paper's 50/10/40; `val` is the first
    `val_of_train` share of the shuffled train part and is removed from `train`."""
    if not (0 < train < 1 and 0 < query < 1 and train + query < 1):
        raise ValueError(f"split fractions must leave a retrieval part (train {train}, "
                         f"query {query})")
    order = np.random.default_rng([seed, 0]).permutation(n)
    n_train, n_query = int(round(train * n)), int(round(query * n))
    n_val = int(round(val_of_train * n_train))
    parts = {"val": order[:n_val], "train": order[n_val:n_train],
             "query": order[n_train:n_train + n_query], "retrieval": order[n_train + n_query:]}
    return {k: np.sort(v) for k, v in parts.items()}
