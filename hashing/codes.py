"""Binary hash codes: continuous network outputs -> bits -> packed bytes / 64-bit words.

Bit convention: a code value h >= 0 is bit 1 (sign +1), h < 0 is bit 0 (sign -1); zero counts
as +1, as in the B update (losses.binary_target). Packing is `np.packbits(..., axis=1)` (big-endian
bit order within each byte), so a K-bit code is K/8 uint8 bytes; `as_words` views those bytes
as K/64 uint64 words (zero-padded) for word-wise XOR + popcount.
"""
from __future__ import annotations

import numpy as np
import torch


def to_bits(h: torch.Tensor | np.ndarray) -> np.ndarray:
    """Continuous codes [N, K] -> bool bits [N, K]."""
    if isinstance(h, torch.Tensor):
        h = h.detach().float().cpu().numpy()
    return np.asarray(h) >= 0


def to_signs(bits: np.ndarray) -> np.ndarray:
    """bool bits -> float32 signs in {-1, +1}."""
    return np.where(bits, 1.0, -1.0).astype(np.float32)


def pack(bits: np.ndarray) -> np.ndarray:
    """bool [N, K] (K a multiple of 8) -> uint8 [N, K/8]."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2 or bits.shape[1] % 8:
        raise ValueError(f"codes must be [N, K] with K a multiple of 8 (got {bits.shape})")
    return np.packbits(bits, axis=1)


def unpack(packed: np.ndarray, n_bits: int) -> np.ndarray:
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=n_bits).astype(bool)


def as_words(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, B] -> uint64 [N, ceil(B/8)], zero padding (zeros XOR to zero: distances keep)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((packed.shape[0], pad), np.uint8)], axis=1)
    return packed.view(np.uint64)
