"""Tokenising and detokenising captions so that edited captions stay readable.

Captions in RS archives are often pre-tokenised ("There is a piece of farmland ."). Tokens are
words (with inner hyphens/apostrophes) or single punctuation marks; detokenising glues
punctuation back to the word before it, so a rewritten caption never gains " ." artefacts.
"""
from __future__ import annotations

import re
import unicodedata

TOKEN = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
_NO_SPACE_BEFORE = set(".,;:!?)]}%")
_NO_SPACE_AFTER = set("([{")
_PUNCT = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text)


def detokenize(tokens: list[str]) -> str:
    out: list[str] = []
    for tok in tokens:
        if out and (tok in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER):
            out[-1] += tok
        else:
            out.append(tok)
    return " ".join(out)


def normalise(text: str, lowercase: bool = False, strip_punctuation: bool = False,
              fix_spacing: bool = True) -> str:
    """Unicode NFC, collapsed whitespace; optionally lower-case and punctuation removed (the
    preprocessing used before text encoding), and detached punctuation re-attached."""
    text = unicodedata.normalize("NFC", text).strip()
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    tokens = tokenize(text)
    return detokenize(tokens) if fix_spacing else " ".join(text.split())
