"""The DUCH hashing module (paper Table I): two hashing MLPs and the modality discriminator.

Table I lists, per network, the sizes d -> 4096 -> K with batch-norm on the hidden layer and a
tanh on the K-bit output. The hidden layer is `Linear -> BatchNorm -> ReLU` (normalise, then
rectify), the order the authors' released network uses. The discriminator maps a K-bit code to
one logit ("is this a text code?") through a 2K hidden layer.
"""
from __future__ import annotations

import torch
from torch import nn

HIDDEN = 4096


class HashMLP(nn.Module):
    """d-dimensional embedding -> K continuous code values in (-1, 1)."""

    def __init__(self, in_dim: int, bits: int, hidden: int = HIDDEN):
        super().__init__()
        self.in_dim, self.bits = in_dim, bits
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, bits),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """K-bit code -> logit of "this code came from the text branch" (text = real)."""

    def __init__(self, bits: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(bits, 2 * bits),
            nn.BatchNorm1d(2 * bits),
            nn.ReLU(inplace=True),
            nn.Linear(2 * bits, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


class DUCH(nn.Module):
    """Image hashing f, text hashing g and discriminator D in one module (one state_dict)."""

    def __init__(self, image_dim: int, text_dim: int, bits: int, hidden: int = HIDDEN):
        super().__init__()
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8 (got {bits})")
        self.image_dim, self.text_dim, self.bits, self.hidden = image_dim, text_dim, bits, hidden
        self.image = HashMLP(image_dim, bits, hidden)
        self.text = HashMLP(text_dim, bits, hidden)
        self.discriminator = Discriminator(bits)

    def hash_parameters(self):
        return list(self.image.parameters()) + list(self.text.parameters())

    def shape(self) -> dict[str, int]:
        """What a checkpoint must match to be loaded into this model."""
        return {"image_dim": self.image_dim, "text_dim": self.text_dim, "bits": self.bits,
                "hidden": self.hidden}
