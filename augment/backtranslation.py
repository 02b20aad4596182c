"""Back-translation of a corpus: captions go source -> pivot(s) -> source through a Translator.

Corpus-level economy, the reason this module exists:
- per hop, identical source sentences are translated once (captions repeat a lot: UCM has
  10,500 captions but 2,032 distinct strings);
- a translation memory (any object with `lookup`/`store`, e.g. the SQLite cache of the pipeline)
  keyed by the translator's namespace (backend, model + revision, languages, decoding) and the
  source text, so reruns, chains that share a first hop and random-pivot runs reuse work;
- outputs are plain Python strings, never fixed-width arrays: nothing is truncated.

Every item gets an outcome: "ok", "unchanged", "empty-input", "empty-output", "split:N" (a
sentence longer than the model accepts was translated in N pieces), "hit-length-limit", or
"failed: <error>"; one bad item never stops the others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from duchkit.augment.translators import TranslatorError

MODES = ("random", "chain")


class TranslationMemory(Protocol):
    def lookup(self, namespace: str, texts: list[str]) -> dict[str, tuple[str, str | None]]: ...

    def store(self, namespace: str, items: dict[str, tuple[str, str | None]]) -> None: ...


class InMemoryTranslationMemory:
    """A dict-backed memory: enough for library use within one process."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], tuple[str, str | None]] = {}

    def lookup(self, namespace: str, texts: list[str]) -> dict[str, tuple[str, str | None]]:
        return {t: self.data[(namespace, t)] for t in texts if (namespace, t) in self.data}

    def store(self, namespace: str, items: dict[str, tuple[str, str | None]]) -> None:
        for text, value in items.items():
            self.data[(namespace, text)] = value


@dataclass
class BackTranslation:
    source: str
    path: tuple[str, ...]            # languages visited, e.g. ("en", "es", "de", "en")
    intermediates: list[str]         # texts in the pivot languages, in path order
    text: str                        # the back-translated text (the source when it failed)
    outcome: str = "ok"

    @property
    def changed(self) -> bool:
        return self.text != self.source


@dataclass
class HopStats:
    pair: tuple[str, str]
    items: int = 0        # sentences asked for
    distinct: int = 0     # distinct sentences among them
    cached: int = 0       # distinct sentences found in the memory
    translated: int = 0   # distinct sentences sent to the model


@dataclass
class BackTranslator:
    translator: object                      # augment.translators.Translator
    memory: TranslationMemory = field(default_factory=InMemoryTranslationMemory)
    chunk: int = 4096   # sentences per model call: the memory is written after each chunk
    stats: list[HopStats] = field(default_factory=list)

    # ------------------------------------------------------------ one hop
    def hop(self, texts: Sequence[str], src: str, tgt: str) -> list[tuple[str, str | None]]:
        """Translate `texts` src -> tgt: (translation, note) per text, in order."""
        ns = self.translator.cache_namespace(src, tgt)
        distinct = list(dict.fromkeys(texts))
        st = HopStats((src, tgt), len(texts), len(distinct))
        known = self.memory.lookup(ns, distinct) if distinct else {}
        st.cached = len(known)
        missing = [t for t in distinct if t not in known]
        st.translated = len(missing)
        for start in range(0, len(missing), self.chunk):
            part = missing[start:start + self.chunk]
            done = self._translate(part, src, tgt)
            # Failures are not remembered: a later run (a fixed model, more memory) may succeed.
            self.memory.store(ns, {t: r for t, r in done.items()
                                   if not (r[1] or "").startswith("failed")})
            known.update(done)
        self.stats.append(st)
        return [known[t] for t in texts]

    def _translate(self, texts: list[str], src: str, tgt: str
                   ) -> dict[str, tuple[str, str | None]]:
        counts = getattr(self.translator, "token_counts", None)
        lengths = counts(texts, src, tgt) if (counts and texts) else None
        limit = getattr(self.translator, "max_input_tokens", None)  # known once loaded
        lengths = lengths if limit else None
        # One tokenizer pass over all texts; only the rare too-long ones are split.
        pieces_of = {t: (self._pieces(t, src, tgt) if lengths and n > limit - 2 else [t])
                     for t, n in zip(texts, lengths or [0] * len(texts))}
        flat = list(dict.fromkeys(p for ps in pieces_of.values() for p in ps))
        results = dict(zip(flat, self._model_call(flat, src, tgt)))
        out = {}
        for text, pieces in pieces_of.items():
            got = [results[p] for p in pieces]
            failed = next((n for _, n in got if n and n.startswith("failed")), None)
            if failed:
                out[text] = ("", failed)
                continue
            joined = " ".join(t.strip() for t, _ in got if t.strip())
            notes = [n for _, n in got if n]
            if len(pieces) > 1:
                notes.insert(0, f"split:{len(pieces)}")
            out[text] = (joined, "; ".join(dict.fromkeys(notes)) or None)
        return out

    def _model_call(self, texts: list[str], src: str, tgt: str) -> list[tuple[str, str | None]]:
        """One batched call; if it raises, each sentence alone, so one bad sentence fails
        alone."""
        if not texts:
            return []
        call = getattr(self.translator, "translate_with_notes", None)
        run = call or (lambda xs, s, t: [(y, None) for y in self.translator.translate(xs, s, t)])
        try:
            res = run(texts, src, tgt)
            if len(res) != len(texts):
                raise RuntimeError(f"translator returned {len(res)} outputs for {len(texts)} "
                                   "inputs")
            return res
        except TranslatorError:
            raise  # a pair without a usable model is the run's problem, not one row's
        except Exception as exc:  # noqa: BLE001 - isolate the culprit below
            if len(texts) == 1:
                return [("", f"failed: {type(exc).__name__}: {str(exc)[:200]}")]
        out = []
        for t in texts:
            try:
                out.append(run([t], src, tgt)[0])
            except Exception as exc:  # noqa: BLE001 - recorded per row
                out.append(("", f"failed: {type(exc).__name__}: {str(exc)[:200]}"))
        return out

    def _pieces(self, text: str, src: str, tgt: str) -> list[str]:
        """The text itself, or, when it is longer than the model accepts, sentences (and, for a
        sentence still too long, runs of words) that fit: translated apart, joined again."""
        counts = self.translator.token_counts
        budget = self.translator.max_input_tokens - 2  # room for the end token
        pieces: list[str] = []
        for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
            if not sentence:
                continue
            if counts([sentence], src, tgt)[0] <= budget:
                pieces.append(sentence)
                continue
            words, run_ = sentence.split(), []
            for w in words:
                if run_ and counts([" ".join(run_ + [w])], src, tgt)[0] > budget:
                    pieces.append(" ".join(run_))
                    run_ = []
                run_.append(w)
            if run_:
                pieces.append(" ".join(run_))
        return pieces

    # ------------------------------------------------------------ whole paths
    def run(self, texts: Sequence[str], paths: Sequence[Sequence[str]]) -> list[BackTranslation]:
        """Send each text along its own language path (first = last = the source language).

        Hop k groups all live items by their k-th language pair, so items that share a hop
        (random mode with the same pivot, chains with a common first hop) share one batched,
        deduplicated, cached translation."""
        if len(texts) != len(paths):
            raise ValueError(f"{len(texts)} texts but {len(paths)} paths")
        items = [BackTranslation(t, tuple(p), [], t) for t, p in zip(texts, paths)]
        current = {}
        for i, it in enumerate(items):
            if len(it.path) < 2:
                raise ValueError(f"item {i}: a path needs at least two languages, got {it.path}")
            if not isinstance(it.source, str) or not it.source.strip():
                it.outcome = "empty-input"
            else:
                current[i] = it.source
        notes: dict[int, list[str]] = {i: [] for i in current}
        longest = max((len(it.path) for it in items), default=0)
        for k in range(longest - 1):
            groups: dict[tuple[str, str], list[int]] = {}
            for i in current:
                path = items[i].path
                if k + 1 < len(path):
                    groups.setdefault((path[k], path[k + 1]), []).append(i)
            for (src, tgt), idx in groups.items():
                results = self.hop([current[i] for i in idx], src, tgt)
                for i, (text, note) in zip(idx, results):
                    it = items[i]
                    if note and note.startswith("failed"):
                        it.outcome = note
                        del current[i]
                        continue
                    if note:
                        notes[i].append(note)
                    if not text.strip():
                        it.outcome = "empty-output"
                        del current[i]
                        continue
                    current[i] = text
                    if k + 2 < len(it.path):
                        it.intermediates.append(text)
        for i, text in current.items():
            it = items[i]
            it.text = text
            extra = list(dict.fromkeys(notes[i]))
            it.outcome = "; ".join(extra) if extra else ("ok" if it.changed else "unchanged")
        for it in items:  # a failed item keeps its source text as "augmented": never empty
            if it.outcome in ("empty-output",) or it.outcome.startswith("failed"):
                it.text = it.source
        return items


# ---------------------------------------------------------------- language paths

def normalise_weights(pivots: Sequence[str], weights: Sequence[float] | None) -> np.ndarray:
    if not pivots:
        raise ValueError("pivots: give at least one pivot language")
    if weights is None or len(weights) == 0:
        return np.full(len(pivots), 1.0 / len(pivots))
    w = np.asarray(weights, dtype=float)
    if len(w) != len(pivots):
        raise ValueError(f"weights: {len(w)} weight(s) for {len(pivots)} pivot(s) {list(pivots)}")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights: must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


def random_path(rng: np.random.Generator, source: str, pivots: Sequence[str],
                probabilities: np.ndarray) -> tuple[str, str, str]:
    """source -> one pivot drawn with the given probabilities -> source."""
    return (source, pivots[int(rng.choice(len(pivots), p=probabilities))], source)


def chain_path(source: str, pivots: Sequence[str]) -> tuple[str, ...]:
    """source -> pivots in order -> source (e.g. en, es, de -> en -> es -> de -> en)."""
    if not pivots:
        raise ValueError("pivots: a chain needs at least one pivot language")
    return (source, *pivots, source)


def pairs_needed(mode: str, source: str, pivots: Sequence[str]) -> list[tuple[str, str]]:
    """Every language pair a run will use, known before any work starts."""
    if mode == "random":
        pairs = [(source, p) for p in pivots] + [(p, source) for p in pivots]
    elif mode == "chain":
        path = chain_path(source, pivots)
        pairs = list(zip(path, path[1:]))
    else:
        raise ValueError(f"mode: must be one of {list(MODES)}, got {mode!r}")
    for a, b in pairs:
        if a == b:
            raise ValueError(f"pivots: a hop from {a!r} to itself ({list(pivots)})")
    return list(dict.fromkeys(pairs))
