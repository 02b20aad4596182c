"""Hamming ranking over hash codes.

Tie rule (stated once, used everywhere): items at equal Hamming distance are ranked by their
position in the retrieval set, lowest index first (a stable sort by distance). Rankings are
therefore deterministic and identical on every path (numpy popcount, torch matmul, CPU or GPU).
"""
from __future__ import annotations

import numpy as np
import torch

from hashing.codes import as_words


def hamming_packed(query: np.ndarray, database: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Distances [Q, N] between packed codes (uint8 [., B] or uint64 words) by XOR + popcount."""
    q = as_words(query) if query.dtype == np.uint8 else query
    db = as_words(database) if database.dtype == np.uint8 else database
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    for start in range(0, q.shape[0], chunk):
        x = q[start:start + chunk, None, :] ^ db[None, :, :]
        out[start:start + chunk] = np.bitwise_count(x).sum(-1, dtype=np.int32)
    return out


def hamming_signs(query: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
    """Distances between +-1 codes as one matmul: d = (K - q.r) / 2 (exact in fp32 for K < 2^24;
    half precision is exact too for K <= 2048)."""
    k = query.shape[1]
    dots = query @ database.T
    return ((k - dots.float()) / 2).round().to(torch.int32)


def rank(distances: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices [Q, k] (all when k is None) ordered by (distance, retrieval index)."""
    n = distances.shape[1]
    k = n if k is None else min(k, n)
    key = distances.astype(np.int64) * n + np.arange(n)  # unique keys encode the tie rule
    if k < n:
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(key, part, 1), axis=1)
        return np.take_along_axis(part, order, 1)
    return np.argsort(key, axis=1)


def rank_torch(distances: torch.Tensor, k: int) -> torch.Tensor:
    """The same ranking on a device: top-k of unique keys, no host sync."""
    n = distances.shape[1]
    key = distances.to(torch.int64) * n + torch.arange(n, device=distances.device)
    return torch.topk(key, min(k, n), dim=1, largest=False, sorted=True).indices


def search(query_packed: np.ndarray, database_packed: np.ndarray, k: int = 20):
    """Top-k (indices, distances) for packed queries: the CPU retrieval path."""
    dist = hamming_packed(query_packed, database_packed)
    idx = rank(dist, k)
    return idx, np.take_along_axis(dist, idx, 1)


def top_k_packed(query: np.ndarray, database: np.ndarray, k: int = 20, chunk: int = 16):
    """Exact top-k (indices, distances) by XOR + popcount, without sorting the database.

    Hamming distances take only K+1 values, so a per-query histogram gives the distance
    threshold that admits at least k items; only those candidates are sorted by (distance,
    index), which is the module's tie rule. Same result as `search`, far less work at 1M codes.
    """
    q = as_words(query) if query.dtype == np.uint8 else query
    db = as_words(database) if database.dtype == np.uint8 else database
    n, nbits = db.shape[0], 64 * db.shape[1]
    k = min(k, n)
    idx_out = np.empty((q.shape[0], k), np.int64)
    dist_out = np.empty((q.shape[0], k), np.int32)
    for s in range(0, q.shape[0], chunk):
        x = np.bitwise_count(q[s:s + chunk, None, :] ^ db[None, :, :])
        d = x[..., 0] if x.shape[2] == 1 else x.sum(-1, dtype=np.uint16)
        rows = d.shape[0]
        offsets = (np.arange(rows) * (nbits + 1))[:, None]
        hist = np.bincount((d + offsets).ravel(), minlength=rows * (nbits + 1))
        threshold = (hist.reshape(rows, nbits + 1).cumsum(1) >= k).argmax(1)
        for r in range(rows):
            cand = np.flatnonzero(d[r] <= threshold[r])
            key = d[r, cand].astype(np.int64) * n + cand
            pick = cand[np.argsort(key)[:k]]
            idx_out[s + r], dist_out[s + r] = pick, d[r, pick]
    return idx_out, dist_out


def top_k_torch(query_bits: np.ndarray, database_bits: np.ndarray, k: int = 20,
                device: str = "cpu"):
    """The GPU path: +-1 codes on `device`, distances by one matmul, top-k of the tie-rule keys.

    Takes bool bits [Q, K] / [N, K] (hashing.codes.unpack); returns numpy (indices, distances)
    equal to `top_k_packed`'s. Runs on the CPU too, which is how its equality is tested."""
    dev = torch.device(device)
    q = torch.as_tensor(np.where(query_bits, 1.0, -1.0), dtype=torch.float32, device=dev)
    db = torch.as_tensor(np.where(database_bits, 1.0, -1.0), dtype=torch.float32, device=dev)
    dist = hamming_signs(q, db)
    idx = rank_torch(dist, k)
    return idx.cpu().numpy(), torch.gather(dist, 1, idx).cpu().numpy()

