"""Hamming ranking over hash codes.

Tie rule (stated once, used everywhere): items at equal Hamming distance are ranked by their
position in the retrieval set, lowest index first (a stable sort by distance). Rankings are
therefore deterministic and identical on every path (numpy popcount, torch matmul, CPU or GPU).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from duchkit.hashing.codes import as_words


def code_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes as uint64 words: uint8 bytes are viewed (hashing.codes.as_words), words
    pass through."""
    return as_words(codes) if codes.dtype == np.uint8 else codes


def hamming_packed(query: np.ndarray, database: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Distances [Q, N] between packed codes (uint8 [., B] or uint64 words) by XOR + popcount."""
    q, db = code_words(query), code_words(database)
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


def rank_torch(distances: torch.Tensor, k: int, max_distance: int | None = None) -> torch.Tensor:
    """The same ranking on a device: top-k of unique keys, no host sync. With `max_distance`
    (the code length) the keys are int32 whenever (max_distance + 1) * n fits, which halves the
    memory and bandwidth of the top-k (1M 128-bit codes fit)."""
    n = distances.shape[1]
    wide = max_distance is None or (max_distance + 1) * n >= 2**31
    dtype = torch.int64 if wide else torch.int32
    key = distances.to(dtype) * n + torch.arange(n, device=distances.device, dtype=dtype)
    return torch.topk(key, min(k, n), dim=1, largest=False, sorted=True).indices


def search(query_packed: np.ndarray, database_packed: np.ndarray, k: int = 20):
    """Top-k (indices, distances) for packed queries: the CPU retrieval path."""
    dist = hamming_packed(query_packed, database_packed)
    idx = rank(dist, k)
    return idx, np.take_along_axis(dist, idx, 1)


def kernel_available() -> bool:
    """Whether the compiled top-k (hashing.hamming_kernel, needs numba) can run here."""
    try:
        import duchkit.hashing.hamming_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def top_k_packed(query: np.ndarray, database: np.ndarray, k: int = 20,
                 threads: int | None = None, kernel: str = "auto"):
    """Exact top-k (indices, distances) of packed codes by XOR + popcount: the CPU retrieval
    path, with the module's tie rule, on `threads` threads (default: CPU count).

    kernel "compiled" (hashing.hamming_kernel, numba: one vectorised pass per chunk of codes,
    several times faster), "numpy" (`top_k_numpy`, no compiler needed), or "auto": compiled
    where numba is installed. Both return the same arrays as `search`.
    """
    if kernel not in ("auto", "compiled", "numpy"):
        raise ValueError(f"kernel must be auto, compiled or numpy, not {kernel!r}")
    if kernel == "numpy" or (kernel == "auto" and not kernel_available()):
        return top_k_numpy(query, database, k, threads)
    from duchkit.hashing.hamming_kernel import top_k_words

    q, db = code_words(query), code_words(database)
    k = min(k, db.shape[0])
    if k == 0 or q.shape[0] == 0:
        return np.empty((q.shape[0], k), np.int64), np.empty((q.shape[0], k), np.int32)
    return top_k_words(q, np.ascontiguousarray(db.T), k, threads or os.cpu_count() or 1)


def top_k_numpy(query: np.ndarray, database: np.ndarray, k: int = 20,
                threads: int | None = None):
    """Exact top-k (indices, distances) by XOR + popcount in numpy, without sorting the database.

    Per query: the distances to every code (XOR + popcount into a small-integer buffer); the
    k-th smallest distance over every 16th code, which bounds the k-th smallest of the whole
    database from above (the whole contains that subset); the codes at or under the bound
    (about 16k of them for spread-out codes); and of those the first k by (distance, index),
    the module's tie rule. When codes bunch so that the bound admits too many candidates, the
    exact k-th distance from a histogram replaces it. Same result as `search`; queries are split
    over `threads` (default: CPU count), since numpy releases the GIL in all of these steps.
    """
    q, db = code_words(query), code_words(database)
    n, words = db.shape
    columns = np.ascontiguousarray(db.T)  # word w of every code, contiguous: read once a query
    k = min(k, n)
    idx_out = np.empty((q.shape[0], k), np.int64)
    dist_out = np.empty((q.shape[0], k), np.int32)
    if k == 0 or q.shape[0] == 0:
        return idx_out, dist_out
    dtype = np.uint8 if 64 * words <= 255 else np.uint16
    sample = 16 if n >= 16 * k else 1

    def run(rows: range) -> None:
        xor, pop, d = np.empty(n, np.uint64), np.empty(n, np.uint8), np.empty(n, dtype)
        for r in rows:
            np.bitwise_count(np.bitwise_xor(columns[0], q[r, 0], out=xor), out=d)
            for w in range(1, words):
                d += np.bitwise_count(np.bitwise_xor(columns[w], q[r, w], out=xor), out=pop)
            bound = np.partition(d[::sample], k - 1)[k - 1]
            cand = np.flatnonzero(d <= bound)
            if len(cand) > 64 * k + 4096:  # bunched codes: take the exact k-th distance
                bound = np.searchsorted(np.cumsum(np.bincount(d)), k)
                cand = np.flatnonzero(d <= bound)
            key = d[cand].astype(np.int64) * n + cand  # (distance, index): the tie rule
            top = np.argpartition(key, k - 1)[:k]
            pick = cand[top[np.argsort(key[top])]]
            idx_out[r], dist_out[r] = pick, d[pick]

    threads = max(1, min(threads or os.cpu_count() or 1, q.shape[0]))
    if threads == 1:
        run(range(q.shape[0]))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [range(i, q.shape[0], threads) for i in range(threads)]))
    return idx_out, dist_out


INT32_KEYS = 2**31  # tie-rule keys below this fit int32, which halves the top-k's traffic


def top_k_signs(query: torch.Tensor, database: torch.Tensor, k: int = 20):
    """Top-k (indices, distances) [Q, k] of +-1 codes, ranked by the tie rule, on their device.

    The tie-rule key is made straight from the matmul's dot products in one integer pass,
    key = (K - dot) * n + index (twice the distance: the same order), instead of distances
    first and keys from them: on a GPU the elementwise passes over the [Q, n] matrix, not the
    matmul, are the cost. Dot products of +-1 codes are exact integers in fp16 for K <= 2048
    and in fp32 for K < 2^24."""
    bits, n = query.shape[1], database.shape[0]
    dtype = torch.int64 if (2 * bits + 1) * n >= INT32_KEYS else torch.int32
    key = (query @ database.T).to(dtype)
    base = torch.arange(n, device=key.device, dtype=dtype) + bits * n
    torch.add(base, key, alpha=-n, out=key)
    values, idx = torch.topk(key, min(k, n), dim=1, largest=False, sorted=True)
    return idx, torch.div(values, 2 * n, rounding_mode="floor").to(torch.int32)


def top_k_torch(query_bits: np.ndarray, database_bits: np.ndarray, k: int = 20,
                device: str = "cpu"):
    """The GPU path: +-1 codes on `device`, distances by one matmul, top-k of the tie-rule keys.

    Takes bool bits [Q, K] / [N, K] (hashing.codes.unpack); returns numpy (indices, distances)
    equal to `top_k_packed`'s. Runs on the CPU too, which is how its equality is tested."""
    dev = torch.device(device)
    q = torch.as_tensor(np.where(query_bits, 1.0, -1.0), dtype=torch.float32, device=dev)
    db = torch.as_tensor(np.where(database_bits, 1.0, -1.0), dtype=torch.float32, device=dev)
    idx, dist = top_k_signs(q, db, k)
    return idx.cpu().numpy(), dist.cpu().numpy()

