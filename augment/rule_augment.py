"""Rule-based caption augmentation: the DUCH paper's Algorithm 1, computed for a corpus at once.

Semantics (Algorithm 1, section IV-B of the paper), for one caption y:
  1. POS-tag y; mark the tokens whose tag is in `replace_tags` (nouns and verbs).
  2. For each marked token, left to right:
       candidates = GloVe nearest neighbours of the word (top_n) with similarity >= glove_threshold;
       drop candidates whose POS tag, re-tagged *in the substituted sentence*, differs from the
       original word's tag;
       BERTScore F1 of every substituted sentence against the ORIGINAL caption y;
       drop candidates with F1 < bertscore_threshold;
       if any remain, replace the token with the best (highest F1) or a random survivor, and
       go on to the next marked token *in the sentence that now carries this replacement*.
  So several words of one caption may be replaced (one per marked token at most), and every
  replacement is judged against the original caption, hence the final caption's F1 against y is
  the last accepted replacement's F1 (>= threshold). `max_replacements` > 0 caps the number of
  replacements (0 = no cap, the paper).

Corpus scale instead of the authors' per-sentence loop: the work is done in *rounds*. Round k
handles the k-th marked token of every caption still active: all its substituted sentences are
tagged in one batched pass and scored in one batched BERTScore call. Identical captions are
processed once (in "best" mode; in "random" mode each caption draws from its own generator, and
the tag/score caches still share identical substituted sentences). GloVe neighbours are computed
once per distinct word, in one vectorised pass.

Where this differs from the authors' public code, on purpose: the BERTScore
threshold is applied (their default path ignores it); BERTScore is computed in corpus-wide
batches instead of one call per token of every caption (same scores, see
benchmarks/rule_augment.py, which re-implements their loop order and checks that both give the
same captions). The paper tags with the Stanford tagger, their code with NLTK; here spaCy is
the offline default and NLTK/stanza are backends (pos_tagging.py).

Choices the paper leaves open, made here and recorded per row:
  - a candidate must be a single token of `caption_text.tokenize` (GloVe has "u.s." and
    punctuation entries) and differ from the word (case-insensitively);
  - a candidate must not be a closed-class word (FUNCTION_WORDS: articles, pronouns,
    prepositions, conjunctions, auxiliaries). GloVe puts such words near common nouns ("piece"
    -> "a", "lot" -> "everyone", "part" -> "the"), and the in-sentence tagger, seeing an odd
    sentence, tags them as the noun they replace, so the same-POS check lets them through
    ("There is a a of farmland"): 3.7% of the replacements on UCM before this rule.
    `exclude_function_words=False` keeps them (the paper's filters only);
  - the candidate takes the case pattern of the word it replaces ("Farmland" -> "Cropland");
  - ties in F1 go to the candidate with the higher GloVe similarity;
  - the text outside the replaced token is kept byte for byte (no re-detokenisation), so an
    output has " ." only where the input had it.

Every GloVe candidate of every marked token that was reached (all of them, unless
`max_replacements` stopped the caption early) is recorded in `RuleResult.candidates` with what
happened to it (CANDIDATE_OUTCOMES: a function word, not a single token, another POS tag in the
substituted sentence, BERTScore F1 under the threshold, passed but not chosen, chosen), from the
tags and scores the rounds compute anyway: the record costs no model call.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from duchkit.augment.caption_text import TOKEN, tokenize
from duchkit.augment.pos_tagging import DEFAULT_REPLACE_TAGS

CHOICES = ("best", "random")
# Closed-class English words: never a noun or verb in a caption, so never a replacement for one.
# Words that are also common nouns or verbs ("back", "side", "well", "do", "have") are not here.
FUNCTION_WORDS = frozenset("""
a an the this that these those each every either neither some any no all both another such
what which whose who whom where when why how there here
i me you he him she her it we us they them my your his its our their mine yours hers ours
theirs myself yourself himself herself itself ourselves themselves everyone everybody
everything someone somebody something anyone anybody anything nobody nothing others
of in on at by for with from to into onto over under along across through between among
around about above below behind beside besides near off out up down upon within without
against toward towards via per past beyond despite during except inside outside since until
till than and or but nor so yet if because although though while whereas unless whether
am is are was were be been being can could may might must shall should will would not very
too also just
""".split())
_WORD = re.compile(r"\w")

# Why a caption came out as it did (one per row; counted in the stage manifest).
CHANGED = "changed"
EMPTY = "empty"                     # no text at all
NO_WORDS = "no_words"               # only punctuation/symbols
NO_MARKED = "no_marked_tokens"      # no noun/verb to replace
UNKNOWN_WORDS = "unknown_words"     # every marked word lacks a GloVe vector (e.g. not English)
NO_CANDIDATES = "no_candidates"     # candidates existed, none passed the filters
REASONS = (CHANGED, EMPTY, NO_WORDS, NO_MARKED, UNKNOWN_WORDS, NO_CANDIDATES)

# What happened to one GloVe candidate of a marked token (one per Candidate).
FUNCTION_WORD = "function_word"     # a closed-class word (FUNCTION_WORDS): never tried
NOT_A_TOKEN = "not_single_token"    # "u.s.", punctuation: not one token of tokenize()
POS_CHANGED = "pos_changed"         # tagged otherwise in the substituted sentence (`tag`)
BELOW_THRESHOLD = "below_bertscore"  # BERTScore F1 against the original < the threshold
NOT_CHOSEN = "not_chosen"           # passed every filter, another candidate was chosen
CHOSEN = "chosen"                   # the replacement (== a Replacement of the result)
CANDIDATE_OUTCOMES = (FUNCTION_WORD, NOT_A_TOKEN, POS_CHANGED, BELOW_THRESHOLD, NOT_CHOSEN,
                      CHOSEN)


@dataclass(frozen=True)
class RuleConfig:
    replace_tags: tuple[str, ...] = DEFAULT_REPLACE_TAGS
    bertscore_threshold: float | None = 0.75  # None: no BERTScore filter
    choice: str = "best"
    max_replacements: int = 0
    exclude_function_words: bool = True  # no FUNCTION_WORDS as candidates

    def __post_init__(self):
        if self.choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {self.choice!r}")
        if self.max_replacements < 0:
            raise ValueError("max_replacements must be >= 0")


@dataclass(frozen=True)
class Replacement:
    position: int          # token index in tokenize(caption)
    old: str
    new: str
    glove_similarity: float
    bertscore_f1: float


@dataclass(frozen=True)
class Candidate:
    """One GloVe candidate for the marked token at `position`, and its outcome."""

    position: int          # token index in tokenize(caption)
    old: str               # the marked token
    candidate: str         # the neighbour, in the token's case pattern
    glove_similarity: float
    outcome: str           # CANDIDATE_OUTCOMES
    old_tag: str           # the token's POS tag in the original caption
    tag: str = ""          # the candidate's tag in the substituted sentence ("": not tagged)
    bertscore_f1: float | None = None  # against the original caption (None: not scored)


@dataclass
class RuleResult:
    augmented: str
    replacements: list[Replacement]
    reason: str
    scoring_truncated: bool = False  # the caption exceeds the encoder's limit: scored on its start
    # every candidate of every marked token reached, in token then GloVe order
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.replacements)


@dataclass
class _Unit:
    """One caption being augmented: tokens with the exact text between them."""

    text: str
    tokens: list[str]
    gaps: list[str]           # len(tokens) + 1: text before, between and after the tokens
    rng: np.random.Generator | None
    tags: list[str] = field(default_factory=list)
    marked: list[int] = field(default_factory=list)
    k: int = 0
    done: list[Replacement] = field(default_factory=list)
    tried: list[Candidate] = field(default_factory=list)
    reason: str = ""
    truncated: bool = False

    def render(self, tokens: Sequence[str]) -> str:
        out = [self.gaps[0]]
        for tok, gap in zip(tokens, self.gaps[1:]):
            out += (tok, gap)
        return "".join(out)


def split_caption(text: str) -> tuple[list[str], list[str]]:
    """Tokens (as `caption_text.tokenize`) and the exact strings around them."""
    tokens, gaps, last = [], [], 0
    for m in TOKEN.finditer(text):
        gaps.append(text[last:m.start()])
        tokens.append(m.group())
        last = m.end()
    gaps.append(text[last:])
    return tokens, gaps


def match_case(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class RuleAugmenter:
    """Algorithm 1 over batches of captions. `tagger`: a `pos_tagging.PosTagger`;
    `neighbours`: a `glove_neighbours.GloveNeighbours`; `scorer`: a `bertscore_filter.BertScoreF1`."""

    def __init__(self, tagger, neighbours, scorer, config: RuleConfig = RuleConfig()):
        self.tagger = tagger
        self.neighbours = neighbours
        self.scorer = scorer
        self.config = config
        self.tag_cache: dict[tuple[str, ...], list[str]] = {}
        self.stats: Counter = Counter()  # sentences tagged, tagger calls, rounds, units

    # -------------------------------------------------------------- batched model calls
    def _tags(self, sentences: list[tuple[str, ...]]) -> list[list[str]]:
        todo = list(dict.fromkeys(s for s in sentences if s not in self.tag_cache))
        if todo:
            self.tag_cache.update(zip(todo, self.tagger.tag(todo)))
            self.stats["tagged_sentences"] += len(todo)
            self.stats["tagger_calls"] += 1
        return [self.tag_cache[s] for s in sentences]

    def _tags_at(self, items: list[tuple[tuple[str, ...], int]]) -> list[str]:
        """The tag of token `pos` in each (sentence, pos). With a tagger whose tags depend on
        at most r tokens each side (`receptive_field`), only the window [pos - r, pos + r] is
        tagged: the same tag, less work, and windows repeat across captions, so the cache
        catches far more of them than whole sentences."""
        r = getattr(self.tagger, "receptive_field", None)
        if r is None:
            return [t[pos] for t, (_, pos) in zip(self._tags([s for s, _ in items]), items)]
        windows = [(s[max(0, pos - r):pos + r + 1], pos - max(0, pos - r)) for s, pos in items]
        return [t[i] for t, (_, i) in zip(self._tags([w for w, _ in windows]), windows)]

    # -------------------------------------------------------------- the algorithm
    def augment(self, captions: Sequence[str],
                rngs: Sequence[np.random.Generator] | None = None) -> list[RuleResult]:
        """One result per caption. `rngs` (one per caption) are needed for choice="random"."""
        cfg = self.config
        if cfg.choice == "random" and (rngs is None or len(rngs) != len(captions)):
            raise ValueError("choice='random' needs one random generator per caption")
        # Identical captions are one unit in "best" mode (the result depends on the text only).
        keys = list(captions) if cfg.choice == "best" else list(range(len(captions)))
        index: dict = {}
        units: list[_Unit] = []
        for i, key in enumerate(keys):
            if key not in index:
                index[key] = len(units)
                tokens, gaps = split_caption(captions[i])
                units.append(_Unit(captions[i], tokens, gaps, rngs[i] if rngs else None))
        self.stats["captions"] += len(captions)
        self.stats["units"] += len(units)
        self._prepare(units)
        self._rounds([u for u in units if u.marked])
        results = []
        for u in units:
            if not u.reason:
                u.reason = CHANGED if u.done else NO_CANDIDATES
            results.append(RuleResult(u.render(self._current(u)), list(u.done), u.reason,
                                      u.truncated, list(u.tried)))
        return [results[index[key]] for key in keys]

    def _prepare(self, units: list[_Unit]) -> None:
        """Tag the originals, mark tokens, fetch neighbours of all marked words at once."""
        tags = self._tags([tuple(u.tokens) for u in units])
        wanted = set(self.config.replace_tags)
        for u, t in zip(units, tags):
            u.tags = t
            if not u.text.strip():
                u.reason = EMPTY
            elif not any(_WORD.search(tok) for tok in u.tokens):
                u.reason = NO_WORDS
            else:
                u.marked = [i for i, (tok, tag) in enumerate(zip(u.tokens, t))
                            if tag in wanted and _WORD.search(tok)]
                if not u.marked:
                    u.reason = NO_MARKED
        neigh = self.neighbours.neighbours(
            u.tokens[i].lower() for u in units for i in u.marked)
        for u in units:
            if u.marked and all(u.tokens[i].lower() not in self.neighbours for i in u.marked):
                u.reason, u.marked = UNKNOWN_WORDS, []
        self._neigh = neigh
        for u in units:
            if u.marked:
                u.truncated = self.scorer.too_long(u.text)

    @staticmethod
    def _current(u: _Unit) -> list[str]:
        tokens = list(u.tokens)
        for r in u.done:
            tokens[r.position] = r.new
        return tokens

    def _candidates(self, u: _Unit, pos: int) -> list[tuple[str, float, str]]:
        """(candidate in the word's case, GloVe similarity, outcome) of each neighbour of the
        token at `pos`: outcome "" for one to try, else why it is not tried."""
        word = u.tokens[pos]
        low = word.lower()
        out = []
        for cand, sim in self._neigh.get(low, ()):
            if cand == low:
                continue
            if tokenize(cand) != [cand]:
                outcome = NOT_A_TOKEN
            elif self.config.exclude_function_words and cand in FUNCTION_WORDS:
                outcome = FUNCTION_WORD
            else:
                outcome = ""
            out.append((match_case(cand, word), sim, outcome))
        return out

    def _rounds(self, active: list[_Unit]) -> None:
        cfg = self.config
        while active:
            self.stats["rounds"] += 1
            # (unit, position, candidate word, glove sim, substituted tokens, index in u.tried)
            pending = []
            for u in active:
                pos = u.marked[u.k]
                current = self._current(u)
                old, old_tag = u.tokens[pos], u.tags[pos]
                for cand, sim, outcome in self._candidates(u, pos):
                    u.tried.append(Candidate(pos, old, cand, float(sim), outcome, old_tag))
                    if not outcome:
                        tokens = list(current)
                        tokens[pos] = cand
                        pending.append((u, pos, cand, sim, tuple(tokens), len(u.tried) - 1))
            # Same POS in the substituted sentence: one tagging pass for the whole round.
            tags = self._tags_at([(p[4], p[1]) for p in pending])
            for p, t in zip(pending, tags):
                u, i = p[0], p[5]
                same = t == u.tags[p[1]]
                u.tried[i] = replace(u.tried[i], tag=t, outcome="" if same else POS_CHANGED)
            pending = [p for p, t in zip(pending, tags) if t == p[0].tags[p[1]]]
            # BERTScore of every survivor against its original caption: one batched call.
            f1 = self.scorer.f1([p[0].render(p[4]) for p in pending],
                                [p[0].text for p in pending]) if pending else []
            by_unit: dict[int, list] = {}
            for p, f in zip(pending, f1):
                passed = cfg.bertscore_threshold is None or f >= cfg.bertscore_threshold
                u, i = p[0], p[5]
                u.tried[i] = replace(u.tried[i], bertscore_f1=float(f),
                                     outcome=NOT_CHOSEN if passed else BELOW_THRESHOLD)
                if passed:
                    by_unit.setdefault(id(u), []).append((p, float(f)))
            for u in active:
                survivors = by_unit.get(id(u))
                if survivors:
                    if cfg.choice == "best":
                        # max F1; ties to the earlier (higher GloVe similarity) candidate
                        best = max(range(len(survivors)), key=lambda j: (survivors[j][1], -j))
                    else:
                        best = int(u.rng.integers(len(survivors)))
                    (_, pos, cand, sim, _, i), f = survivors[best]
                    u.done.append(Replacement(pos, u.tokens[pos], cand, sim, f))
                    u.tried[i] = replace(u.tried[i], outcome=CHOSEN)
                u.k += 1
            active = [u for u in active if u.k < len(u.marked) and not (
                cfg.max_replacements and len(u.done) >= cfg.max_replacements)]
