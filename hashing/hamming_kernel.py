"""Exact Hamming top-k over packed codes, compiled with numba: the fast CPU retrieval path.

numpy makes one pass over the database per operation (XOR, popcount, compare, select), each a
full read and write of a database-sized buffer; here one loop does XOR + popcount + running
minimum over a cache-sized chunk of codes, which LLVM vectorises (AVX2 where the CPU has it),
and only a chunk whose minimum beats a query's current k-th distance is merged into that query's
sorted top-k list. At 1M random 64-bit codes that is a merge for a few percent of chunks once
the first ones have set the bound. Queries are blocked (`QUERY_BLOCK` per task) so a chunk is
reused from cache by several queries, and blocks run in parallel over numba's threads.

Tie rule (hashing.retrieval): equal distances rank by database index, lowest first. Codes are
visited in index order and a code enters a query's list only when strictly nearer than its
current k-th, after every code already there at the same distance, so the lists hold exactly
the first k by (distance, index).

Imported lazily by hashing.retrieval, which keeps a numpy implementation for machines without
numba; `available()` says which one runs.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

QUERY_BLOCK = 16  # queries that share each chunk of codes while it is in cache
CHUNK = 2048  # codes per chunk: 16 KiB of one 64-bit word, a quarter of this L1 cache
_FAR = np.int32(1 << 30)  # larger than any distance: the empty slots of a top-k list
_WORKQUEUE_LOCK = threading.Lock()


@intrinsic
def _popcount(typingctx, x):
    """LLVM's ctpop on a uint64 (numba has no popcount of its own): the popcnt instruction, or
    a vector popcount when the loop around it is vectorised."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(inline="always")
def _chunk_distances(columns, query, start, stop, out) -> np.int32:
    """Distances of codes start:stop to one query into out[:stop - start]; returns their
    minimum. The minimum is folded into the last word's loop so it costs no extra pass."""
    words = query.shape[0]
    n = stop - start
    for w in range(words - 1):
        col, qw = columns[w, start:stop], query[w]
        if w == 0:
            for j in range(n):
                out[j] = np.int32(_popcount(col[j] ^ qw))
        else:
            for j in range(n):
                out[j] += np.int32(_popcount(col[j] ^ qw))
    col, qw = columns[words - 1, start:stop], query[words - 1]
    low = _FAR
    if words == 1:
        for j in range(n):
            d = np.int32(_popcount(col[j] ^ qw))
            out[j] = d
            low = min(low, d)
    else:
        for j in range(n):
            d = out[j] + np.int32(_popcount(col[j] ^ qw))
            out[j] = d
            low = min(low, d)
    return low


@njit(inline="always")
def _merge(dist, n, start, top_d, top_i):
    """Insert the codes of one chunk that are strictly nearer than the current k-th into the
    sorted list (top_d, top_i), keeping the tie rule (see the module docstring)."""
    k = top_d.shape[0]
    worst = top_d[k - 1]
    for j in range(n):
        d = dist[j]
        if d < worst:
            p = k - 1
            while p > 0 and top_d[p - 1] > d:
                top_d[p] = top_d[p - 1]
                top_i[p] = top_i[p - 1]
                p -= 1
            top_d[p] = d
            top_i[p] = start + j
            worst = top_d[k - 1]


@njit(parallel=True, cache=True, nogil=True)
def _top_k(queries, columns, k, block, idx_out, dist_out):
    n_queries = queries.shape[0]
    n = columns.shape[1]
    for b in prange((n_queries + block - 1) // block):
        first = b * block
        m = min(n_queries, first + block) - first
        top_d = np.full((m, k), _FAR, np.int32)
        top_i = np.full((m, k), -1, np.int64)
        dist = np.empty(CHUNK, np.int32)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            for a in range(m):
                if _chunk_distances(columns, queries[first + a], start, stop, dist) < top_d[a, k - 1]:
                    _merge(dist, stop - start, start, top_d[a], top_i[a])
        idx_out[first:first + m] = top_i
        dist_out[first:first + m] = top_d


def _exclusive_if_needed():
    """A lock around the parallel call where numba runs on its workqueue threading layer (no
    OpenMP or TBB on the machine): that layer aborts the whole process when two Python threads
    enter parallel code at once, as a threaded server calling search would. OpenMP and TBB are
    safe to enter concurrently, so there calls stay concurrent. Before the first parallel call
    numba has not chosen its layer yet; the lock covers that call too."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet in this process
        return _WORKQUEUE_LOCK
    return _WORKQUEUE_LOCK if layer == "workqueue" else contextlib.nullcontext()


def top_k_words(queries: np.ndarray, columns: np.ndarray, k: int, threads: int):
    """Top-k (indices int64, distances int32) of uint64 query words [Q, W] against the database
    as word columns [W, N] (contiguous), 1 <= k <= N, on `threads` numba threads."""
    import numba

    idx = np.empty((queries.shape[0], k), np.int64)
    dist = np.empty((queries.shape[0], k), np.int32)
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    # small query batches: spread them over the threads rather than one block on one thread
    block = max(1, min(QUERY_BLOCK, -(-queries.shape[0] // threads)))
    before = numba.get_num_threads()  # numba's thread count is per calling thread
    numba.set_num_threads(threads)
    try:
        with _exclusive_if_needed():
            _top_k(np.ascontiguousarray(queries), columns, k, block, idx, dist)
    finally:
        numba.set_num_threads(before)
    return idx, dist
