"""BERTScore F1 between candidate and reference sentences, in large cached batches.

Wraps `bert_score.BERTScorer`. Baseline rescaling is used when the scorer has a baseline file
for its model (the hub models bert-score ships baselines for, e.g. roberta-large); for other
models (a local directory such as the offline all-MiniLM-L6-v2) there is none, so the score
and any threshold on it are the raw F1.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from duchkit.augment.precision import PRECISIONS, autocast


def baseline_file(model_type: str, lang: str = "en") -> str | None:
    """bert-score's own rescale baseline for `model_type`, or None if it ships none."""
    import bert_score

    path = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", lang,
                        f"{model_type}.tsv")
    return path if os.path.isfile(path) else None


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> fp16 on CUDA, fp32 on the CPU (where fp16 is slow and bf16 changes scores).
    The names are the encoders' (`augment.precision.PRECISIONS`); unlike an embedding, a
    score filter must not silently run fp16 as fp32, so fp16 on the CPU is an error here."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    return precision


def make_scorer(model_type: str, num_layers: int | None = None, device: str = "cpu",
                rescale: str | bool = "auto", baseline_path: str | None = None,
                lang: str = "en"):
    """A `BERTScorer`. `rescale`: True, False, or "auto" (rescale iff a baseline exists)."""
    from bert_score import BERTScorer

    if baseline_path is not None and not os.path.isfile(baseline_path):
        raise FileNotFoundError(f"BERTScore baseline file {baseline_path} does not exist")
    has_baseline = baseline_path is not None or baseline_file(model_type, lang) is not None
    if rescale == "auto":
        rescale = has_baseline
    elif rescale and not has_baseline:
        raise FileNotFoundError(f"no BERTScore baseline file for {model_type!r}: give "
                                "baseline_path or set rescale to false/auto")
    return BERTScorer(model_type=model_type, num_layers=num_layers, device=device, lang=lang,
                      rescale_with_baseline=bool(rescale), baseline_path=baseline_path)


class BertScoreF1:
    """F1 of (candidate, reference) pairs; every distinct pair is scored once per instance.

    Computes exactly what `BERTScorer.score` computes (bert-score's own `get_bert_embedding`
    and `greedy_cos_idf`, the same idf weights, baseline rescaling), but keeps the contextual
    embeddings of *reference* sentences between calls: Algorithm 1 scores every round's
    candidates against the same original captions, and re-embedding them each round was about
    a third of the model time. Scores agree with `BERTScorer.score` to float rounding (padding
    to a different batch length).

    `precision`: the encoder's autocast dtype. "fp32" is bit-for-bit bert-score. "bf16" runs
    the encoder about 2.5x faster on CPUs with AMX/AVX512-BF16 (and on GPUs); scores then move
    by about 1e-3, which can flip near-ties between candidates, so it is opt-in on the CPU.
    "auto": fp16 on CUDA, fp32 on the CPU. The similarity matching always runs in fp32.
    """

    def __init__(self, scorer, batch_size: int = 256, precision: str = "auto", model=None):
        from collections import defaultdict

        self.scorer = scorer
        # the encoder that embeds: the scorer's own, or the same run by another runtime
        # (pipelines.runtimes.wrap_token_model)
        self.model = scorer._model if model is None else model
        self.batch_size = int(batch_size)
        self.precision = resolve_precision(precision, str(scorer.device))
        self.cache: dict[tuple[str, str], float] = {}
        self.ref_embeddings: dict[str, tuple] = {}
        self.pairs_scored = 0  # distinct pairs sent to the model, for tests and benchmarks
        self.sentences_embedded = 0
        self.calls = 0
        tok = scorer._tokenizer
        limit = getattr(getattr(scorer._model, "config", None), "max_position_embeddings", None)
        # Some tokenizers report no usable limit (1e30); bert-score truncates at the
        # tokenizer's limit, so make it the model's.
        if limit and (tok.model_max_length is None or tok.model_max_length > limit):
            tok.model_max_length = limit
        self.max_tokens = int(tok.model_max_length)
        if scorer.idf:
            self.idf_dict = scorer._idf_dict
        else:  # what BERTScorer.score uses without idf
            self.idf_dict = defaultdict(lambda: 1.0)
            self.idf_dict[tok.sep_token_id] = 0
            self.idf_dict[tok.cls_token_id] = 0

    @property
    def rescaled(self) -> bool:
        return bool(self.scorer.rescale_with_baseline)

    def too_long(self, text: str) -> bool:
        """True if the encoder must truncate `text` (bert-score then scores only its start)."""
        n = len(self.scorer._tokenizer(text, add_special_tokens=True,
                                       truncation=False)["input_ids"])
        return n > self.max_tokens

    def _batches(self, todo: list[str], lengths: list[int] | None = None) -> list[list[str]]:
        """Batches of sentences with the same token count, so no batch carries padding.
        `lengths`: the token counts of `todo` where the caller has its ids already.

        bert-score sorts by word count, which left ~24 % of the encoded positions padding on
        UCM's candidate sentences; the encoder's cost is per position, so grouping by the
        exact token count saves that share of the model time. Embeddings do not depend on
        the batch beyond float rounding."""
        if not todo:
            return []
        if lengths is None:
            lengths = [len(ids) for ids in self._token_ids(todo)]
        by_length: dict[int, list[str]] = {}
        for sent, n in zip(todo, lengths):
            by_length.setdefault(n, []).append(sent)
        return [group[i:i + self.batch_size]
                for n in sorted(by_length, reverse=True)
                for group in [sorted(by_length[n])]
                for i in range(0, len(group), self.batch_size)]

    def _token_ids(self, batch: list[str]) -> list[list[int]]:
        """bert-score's `sent_encode` of each sentence, in one tokenizer call where that gives
        the same ids (a fast tokenizer): one call per sentence was 6% of the stage's time."""
        from bert_score.utils import sent_encode
        from transformers import GPT2Tokenizer, PreTrainedTokenizerFast, RobertaTokenizer

        tok = self.scorer._tokenizer
        if (not isinstance(tok, PreTrainedTokenizerFast)
                or isinstance(tok, (GPT2Tokenizer, RobertaTokenizer))
                or any(not s.strip() for s in batch)):
            return [sent_encode(tok, s) for s in batch]
        return tok([s.strip() for s in batch], add_special_tokens=True,
                   max_length=tok.model_max_length, truncation=True)["input_ids"]

    def _embed(self, sentences: list[str], into: dict) -> None:
        import torch
        from bert_score.utils import bert_encode, padding

        device = "cuda" if str(self.scorer.device).startswith("cuda") else "cpu"

        todo = [s for s in dict.fromkeys(sentences) if s not in into]
        if not todo:
            return
        token_ids = dict(zip(todo, self._token_ids(todo)))  # tokenised once, batched by length
        for batch in self._batches(todo, [len(token_ids[s]) for s in todo]):
            # what bert_score.utils.get_bert_embedding does, with the tokenising batched
            ids = [token_ids[s] for s in batch]
            x, _, mask = padding(ids, self.scorer._tokenizer.pad_token_id, dtype=torch.long)
            idf, _, _ = padding([[self.idf_dict[i] for i in a] for a in ids], 0,
                                dtype=torch.float)
            with autocast(device, self.precision):
                emb = bert_encode(self.model, x.to(self.scorer.device),
                                  attention_mask=mask.to(self.scorer.device))
            emb = emb.float().cpu()
            for i, sent in enumerate(batch):
                n = int(mask[i].sum())
                into[sent] = (emb[i, :n].clone(), idf[i, :n].clone())
            self.sentences_embedded += len(batch)

    def _f1(self, cands: list[str], refs: list[str]):
        import torch
        from bert_score.utils import greedy_cos_idf
        from torch.nn.utils.rnn import pad_sequence

        hyp: dict = {}
        self._embed(refs, self.ref_embeddings)
        self._embed(cands, hyp)
        device = self.scorer.device

        def padded(stats):
            emb = pad_sequence([e.to(device) for e, _ in stats], batch_first=True,
                               padding_value=2.0)
            idf = pad_sequence([i.to(device) for _, i in stats], batch_first=True)
            lens = torch.tensor([e.size(0) for e, _ in stats])
            mask = (torch.arange(int(lens.max()))[None, :] < lens[:, None]).to(device)
            return emb, mask, idf

        out = []
        for start in range(0, len(cands), self.batch_size):
            r = [self.ref_embeddings[s] for s in refs[start:start + self.batch_size]]
            h = [hyp[s] for s in cands[start:start + self.batch_size]]
            _, _, f = greedy_cos_idf(*padded(r), *padded(h))
            out.append(f.cpu())
        f = torch.cat(out)
        if self.scorer.rescale_with_baseline:
            b = self.scorer.baseline_vals[2]
            f = (f - b) / (1 - b)
        return f

    def f1(self, cands: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        pairs = list(zip(cands, refs))
        todo = list(dict.fromkeys(p for p in pairs if p not in self.cache))
        if todo:
            import torch

            with torch.inference_mode():
                f = self._f1([c for c, _ in todo], [r for _, r in todo])
            self.cache.update(zip(todo, f.tolist()))
            self.pairs_scored += len(todo)
            self.calls += 1
        return np.array([self.cache[p] for p in pairs], dtype=np.float64)
