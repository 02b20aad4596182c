"""Stand-ins for the three models of Algorithm 1 (tagger, GloVe neighbours, BERTScore), with
the interfaces augment.rule_augment uses, so its bookkeeping is tested without loading spaCy,
GloVe or MiniLM. Each is a lookup table: what it returns is written in the test that uses it.

CAPTION below, through `fake_augmenter()` with the default config, exercises every candidate
outcome:
    planes (NNS): aircraft -> tagged NN (POS changed), jets -> F1 .90 (chosen),
                  the -> function word, u.s. -> not a single token
    parked (VBN): stationed -> F1 .80 (passed, not chosen), sitting -> F1 .85 (chosen)
    field (NN):   meadow -> F1 .71 (< .75), grassy -> tagged JJ (POS changed)
"""
from __future__ import annotations

import numpy as np

from duchkit.augment.rule_augment import RuleAugmenter, RuleConfig

CAPTION = "Many planes are parked near a green field ."
TAGS = {"many": "JJ", "planes": "NNS", "jets": "NNS", "aircraft": "NN", "are": "VBP",
        "parked": "VBN", "stationed": "VBN", "sitting": "VBN", "near": "IN", "a": "DT",
        "the": "DT", "green": "JJ", "grassy": "JJ", "field": "NN", "meadow": "NN", ".": "."}
NEIGHBOURS = {"planes": [("aircraft", 0.80), ("jets", 0.78), ("the", 0.75), ("u.s.", 0.70)],
              "parked": [("stationed", 0.70), ("sitting", 0.68)],
              "field": [("meadow", 0.70), ("grassy", 0.69)]}
# BERTScore F1 of a sentence: the lowest score of the substituted words it holds
SCORES = {"jets": 0.90, "aircraft": 0.95, "the": 0.95, "stationed": 0.80, "sitting": 0.85,
          "meadow": 0.71, "grassy": 0.95}


class FakeTagger:
    """Context-free tags from TAGS (no `receptive_field`: whole sentences are tagged)."""

    def tag(self, sentences):
        return [[TAGS.get(t.lower(), "NN") for t in s] for s in sentences]


class FakeNeighbours:
    def __init__(self, table=NEIGHBOURS):
        self.table = table

    def __contains__(self, word):
        return word in self.table

    def neighbours(self, words):
        return {w: list(self.table.get(w, [])) for w in words}


class FakeScorer:
    max_tokens = 512

    def too_long(self, text):
        return False

    def f1(self, candidates, references):
        out = []
        for cand, ref in zip(candidates, references):
            new = set(cand.lower().split()) - set(ref.lower().split())
            out.append(min([SCORES.get(w, 0.5) for w in new] or [1.0]))
        return np.array(out, np.float32)


def fake_augmenter(**config) -> RuleAugmenter:
    return RuleAugmenter(FakeTagger(), FakeNeighbours(), FakeScorer(), RuleConfig(**config))
