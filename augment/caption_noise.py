"""Character and token noise for captions: typos and dropped words, seeded and countable.

    text, n = corrupt_text("There is a piece of farmland .", "swapped-char", 1, rng)

Each kind edits `edits` distinct words of the caption (one edit per word), so edits never
undo or overlap each other and what happened is checkable from the count alone:
- missing-char:    one letter of a word of 2+ letters is deleted (length - n);
- swapped-char:    two adjacent, different letters of a word trade places (same letters);
- duplicated-char: one letter of a word is written twice (length + n);
- replaced-char:   one letter becomes another letter of the same case (n positions differ);
- removed-token:   a whole word is dropped with the space before it; the last word never is.
"Word" means a run of letters for the character kinds (digits, punctuation and whitespace are
never touched) and a word token (caption_text.TOKEN with a letter in it) for removed-token.
The count returned is the edits made: fewer than asked when the caption has fewer eligible
words (a caption without letters stays as it is, with count 0).
"""
from __future__ import annotations

import re
import string

import numpy as np

from duchkit.augment.caption_text import TOKEN

CHAR_KINDS = ("missing-char", "swapped-char", "duplicated-char", "replaced-char")
TEXT_KINDS = CHAR_KINDS + ("removed-token",)
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters, any script


def _swappable(word: str) -> list[int]:
    return [i for i in range(len(word) - 1) if word[i] != word[i + 1]]


def _eligible(kind: str, word: str) -> bool:
    if kind == "missing-char":
        return len(word) >= 2  # a one-letter word would vanish: that is removed-token's job
    if kind == "swapped-char":
        return bool(_swappable(word))  # "ee" swapped is "ee": no edit
    return True


def _edit_word(kind: str, word: str, rng: np.random.Generator) -> str:
    if kind == "swapped-char":
        i = _swappable(word)[int(rng.integers(len(_swappable(word))))]
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    i = int(rng.integers(len(word)))
    if kind == "missing-char":
        return word[:i] + word[i + 1:]
    if kind == "duplicated-char":
        return word[:i + 1] + word[i:]
    old = word[i].lower()
    new = [c for c in string.ascii_lowercase if c != old][int(rng.integers(25))]
    return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1:]


def _remove_tokens(text: str, edits: int, rng: np.random.Generator) -> tuple[str, int]:
    words = [m.span() for m in TOKEN.finditer(text) if any(c.isalpha() for c in m.group())]
    n = min(edits, len(words) - 1)  # at least one word stays: never an empty caption
    if n <= 0:
        return text, 0
    chosen = sorted((words[i] for i in rng.choice(len(words), n, replace=False)), reverse=True)
    for start, end in chosen:  # right to left: the spans on the left stay valid
        before = start - (len(text[:start]) - len(text[:start].rstrip()))
        if before < start:  # the space before the word goes with it ...
            start = before
        else:  # ... or, for the caption's first word, the space after it
            end += len(text[end:]) - len(text[end:].lstrip())
        text = text[:start] + text[end:]
    return text, n


def corrupt_text(text: str, kind: str, edits: int, rng: np.random.Generator
                 ) -> tuple[str, int]:
    """The caption with `edits` edits of `kind` on distinct words, and the edits made."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; known: {list(TEXT_KINDS)}")
    if kind == "removed-token":
        return _remove_tokens(text, edits, rng)
    words = [m.span() for m in _LETTERS.finditer(text) if _eligible(kind, m.group())]
    n = min(edits, len(words))
    if n <= 0:
        return text, 0
    chosen = sorted(int(i) for i in rng.choice(len(words), n, replace=False))
    edited = {i: _edit_word(kind, text[slice(*words[i])], rng) for i in chosen}
    for i in reversed(chosen):  # right to left: lengths change, left spans stay valid
        start, end = words[i]
        text = text[:start] + edited[i] + text[end:]
    return text, n
