"""Nearest GloVe neighbours of words, computed once per distinct word for a whole corpus.

`GloveNeighbours` wraps a gensim `KeyedVectors`. The answer for a word is the same list
`kv.most_similar(word, topn=top_n)` gives (cosine over unit vectors, the word itself left out),
but computed for many words in one matrix product per chunk and cached, so a corpus asks for
each vocabulary word once instead of once per occurrence.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

Neighbour = tuple[str, float]


def vectors_from_downloader(name: str):
    """A gensim downloader model by name (e.g. "glove-wiki-gigaword-200"): needs the network
    the first time, then gensim's own cache (~/gensim-data)."""
    import gensim.downloader

    try:
        return gensim.downloader.load(name)
    except Exception as exc:  # gensim raises ValueError/OSError/URLError depending on cause
        raise FileNotFoundError(f"gensim downloader could not load {name!r}: {exc}") from None


def vectors_from_file(path: str | os.PathLike):
    """A local vectors file: gensim's saved KeyedVectors (`.kv`, `.model`), word2vec binary
    (`.bin`), or word2vec/GloVe text (with or without the "count dim" header line)."""
    from gensim.models import KeyedVectors

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vectors file {path} does not exist")
    if path.endswith((".kv", ".model", ".kvmodel")):
        return KeyedVectors.load(path)
    if path.endswith(".bin"):
        return KeyedVectors.load_word2vec_format(path, binary=True)
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().split()
    # GloVe's own text format has no header; word2vec text starts with "count dim".
    no_header = not (len(first) == 2 and all(p.isdigit() for p in first))
    return KeyedVectors.load_word2vec_format(path, binary=False, no_header=no_header)


def vectors_from_arrays(words: Iterable[str], vectors: np.ndarray):
    from gensim.models import KeyedVectors

    words = list(words)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(words) != vectors.shape[0]:
        raise ValueError(f"{len(words)} words for a vectors array of shape {vectors.shape}")
    # count=0: a preallocated count would leave that many empty rows before the added ones
    kv = KeyedVectors(vectors.shape[1], count=0)
    kv.add_vectors(words, vectors)
    return kv


class GloveNeighbours:
    """Top-n most similar vocabulary words (cosine >= threshold) for each query word."""

    def __init__(self, kv, top_n: int = 10, threshold: float = 0.65, chunk: int = 128):
        self.kv = kv
        self.top_n = int(top_n)
        self.threshold = float(threshold)
        self.chunk = int(chunk)
        self.normed = kv.get_normed_vectors()  # float32 (V, d), computed once by gensim
        self.cache: dict[str, list[Neighbour]] = {}
        self.queries = 0  # words actually computed (not served from the cache), for tests

    def __contains__(self, word: str) -> bool:
        return word in self.kv.key_to_index

    def neighbours(self, words: Iterable[str]) -> dict[str, list[Neighbour]]:
        """{word: [(neighbour, similarity), ...]} best first; [] for a word without a vector.
        Only neighbours with similarity >= threshold are kept."""
        words = list(dict.fromkeys(words))
        todo = [w for w in words if w not in self.cache]
        known = [w for w in todo if w in self.kv.key_to_index]
        for w in todo:
            if w not in self.kv.key_to_index:
                self.cache[w] = []
        keys = self.kv.index_to_key
        n = self.top_n
        for start in range(0, len(known), self.chunk):
            batch = known[start:start + self.chunk]
            idx = np.array([self.kv.key_to_index[w] for w in batch])
            sims = self.normed[idx] @ self.normed.T  # (b, V)
            sims[np.arange(len(batch)), idx] = -np.inf  # most_similar leaves the word out
            k = min(n, sims.shape[1] - 1)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k > 0 else \
                np.zeros((len(batch), 0), dtype=int)
            for row, w in enumerate(batch):
                cand = top[row]
                # Sort by similarity, ties by vocabulary index (the order gensim reports).
                order = np.lexsort((cand, -sims[row, cand]))
                self.cache[w] = [(keys[j], float(sims[row, j])) for j in cand[order]
                                 if sims[row, j] >= self.threshold]
            self.queries += len(batch)
        return {w: self.cache[w] for w in words}
