"""The DUCH hashing module (paper Table I): two hashing MLPs and the modality discriminator.

Table I lists, per network, the sizes d -> 4096 -> K with batch-norm on the hidden layer and a
tanh on the K-bit output. The hidden layer is `Linear -> BatchNorm -> ReLU` (normalise, then
rectify), the order the authors' released network uses. The discriminator maps a K-bit code to
one logit ("is this a text code?") through a 2K hidden layer.

Each hashing MLP first scales its input embedding to unit L2 norm (`input_norm="l2"`, the
default). Encoder embeddings carry a norm that says little about content (summed hidden states,
pooled activations), and the authors' data loader normalises every embedding on load; doing it
inside the module means training, evaluation and `duchkit search` can never disagree about it.
`input_norm="none"` feeds the raw embedding, as earlier duchkit versions did.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from duchkit.hashing.config import INPUT_NORMS

HIDDEN = 4096


class HashMLP(nn.Module):
    """d-dimensional embedding -> K continuous code values in (-1, 1)."""

    def __init__(self, in_dim: int, bits: int, hidden: int = HIDDEN, input_norm: str = "l2"):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS} (got {input_norm!r})")
        self.in_dim, self.bits, self.input_norm = in_dim, bits, input_norm
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, bits),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "l2":
            x = F.normalize(x, dim=-1)
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

    def __init__(self, image_dim: int, text_dim: int, bits: int, hidden: int = HIDDEN,
                 input_norm: str = "l2"):
        super().__init__()
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8 (got {bits})")
        self.image_dim, self.text_dim, self.bits, self.hidden = image_dim, text_dim, bits, hidden
        self.input_norm = input_norm
        self.image = HashMLP(image_dim, bits, hidden, input_norm)
        self.text = HashMLP(text_dim, bits, hidden, input_norm)
        self.discriminator = Discriminator(bits)

    def hash_parameters(self):
        return list(self.image.parameters()) + list(self.text.parameters())

    def shape(self) -> dict[str, int]:
        """What a checkpoint must match to be loaded into this model."""
        return {"image_dim": self.image_dim, "text_dim": self.text_dim, "bits": self.bits,
                "hidden": self.hidden, "input_norm": self.input_norm}
