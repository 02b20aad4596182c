"""Exact Hamming top-k over packed codes, compiled with numba: the fast CPU retrieval path.

numpy makes one pass over the database per operation (XOR, popcount, compare, select), each a
full read and write of a database-sized buffer; here one loop does XOR + popcount + running
minimum over a cache-sized chunk of codes, which LLVM vectorises (AVX2 where the CPU has it),
and only a chunk whose minimum beats a query's current k-th distance is merged into that query's
sorted top-k list. At 1M random 64-bit codes that is a merge for a few percent of chunks once
the first ones have set the bound. Queries are blocked (`QUERY_BLOCK` per task) so a chunk is
reused from cache by several queries, and blocks run in parallel over numba's threads. With
fewer blocks than threads (one query) the database is also cut into slices, one task each, and
the slices' top-k lists are merged.

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
SLICE_CHUNKS = 64  # least chunks per database slice (131k codes): less work than that is not
# worth waking another thread for
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
def _top_k(queries, columns, k, block, parts, idx_out, dist_out):
    """Top-k lists of each query block against each of `parts` equal slices of the database
    (one task per block x slice), into idx_out/dist_out [Q, parts, k]. Slices are whole chunks,
    so a slice's lists are what one pass over it gives."""
    n_queries = queries.shape[0]
    n = columns.shape[1]
    n_blocks = (n_queries + block - 1) // block
    chunks = (n + CHUNK - 1) // CHUNK
    per_part = (chunks + parts - 1) // parts * CHUNK
    for task in prange(n_blocks * parts):
        b, part = task // parts, task % parts
        first = b * block
        m = min(n_queries, first + block) - first
        lo, hi = min(n, part * per_part), min(n, (part + 1) * per_part)
        top_d = np.full((m, k), _FAR, np.int32)
        top_i = np.full((m, k), -1, np.int64)
        dist = np.empty(CHUNK, np.int32)
        for start in range(lo, hi, CHUNK):
            stop = min(hi, start + CHUNK)
            for a in range(m):
                if _chunk_distances(columns, queries[first + a], start, stop, dist) < top_d[a, k - 1]:
                    _merge(dist, stop - start, start, top_d[a], top_i[a])
        idx_out[first:first + m, part] = top_i
        dist_out[first:first + m, part] = top_d


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


def top_k_words(queries: np.ndarray, columns: np.ndarray, k: int, threads: int,
                parts: int | None = None):
    """Top-k (indices int64, distances int32) of uint64 query words [Q, W] against the database
    as word columns [W, N] (contiguous), 1 <= k <= N, on `threads` numba threads, with the
    database cut into `parts` slices (default: enough to give every thread a task)."""
    import numba

    n_queries, n = queries.shape[0], columns.shape[1]
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    # small query batches: spread them over the threads rather than one block on one thread;
    # fewer blocks than threads (a single query, as `duchkit search` sends) also split the
    # database into slices, so one query uses every thread
    block = max(1, min(QUERY_BLOCK, -(-n_queries // threads)))
    n_blocks = -(-n_queries // block)
    if parts is None:
        parts = max(1, min(threads // n_blocks, -(-n // (CHUNK * SLICE_CHUNKS))))
    idx = np.empty((n_queries, parts, k), np.int64)
    dist = np.empty((n_queries, parts, k), np.int32)
    before = numba.get_num_threads()  # numba's thread count is per calling thread
    numba.set_num_threads(threads)
    try:
        with _exclusive_if_needed():
            _top_k(np.ascontiguousarray(queries), columns, k, block, parts, idx, dist)
    finally:
        numba.set_num_threads(before)
    if parts == 1:
        return idx.reshape(n_queries, k), dist.reshape(n_queries, k)
    # slices hold increasing indices and each list is sorted by (distance, index): a stable
    # sort of the concatenated lists by distance keeps the tie rule; empty slots sort last
    idx, dist = idx.reshape(n_queries, -1), dist.reshape(n_queries, -1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)
