"""Retrieval metrics over Hamming rankings (paper eq. 10-11).

Standard mAP@K (default, `variant="standard"`): with P(i) the precision of the first i results
and r the number of relevant items among the first K,
    AP@K = (1 / r) * sum_{i=1..K} P(i) rel(i)          (0 when r = 0),
the mean precision at the relevant hits of the top K. This is eq. 10 as the cross-modal hashing
literature computes it (the `calc_map_k` of DCMH, DJSRH and JDSH, the methods the paper compares
with), the "standard truncated AP@20": its figures can lie above the authors' variant, which
only this normalisation allows.

IR variant (`variant="ir"`): the same sum over 1 / min(K, R), R the relevant items in the whole
database (the truncated AP of the IR literature). It also charges the relevant items that did not
make the top K, so it is never above the authors' variant; earlier duchkit releases reported it as
"standard".

Authors' variant (`variant="authors"`, for comparison with published figures only): the
precision is read at the ranks of the first min(K, R) relevant items *wherever they fall in the
whole ranking*, even beyond K, and averaged over min(K, R). It rewards a run that finds its
relevant items late and is not AP@K. All three use the tie rule of hashing.retrieval.

Relevance: two items are relevant when their labels are equal (class labels; pass image indices
as labels for paired-caption relevance).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from duchkit.hashing.config import MAP_VARIANTS as VARIANTS
from duchkit.hashing.retrieval import hamming_packed, rank, rank_torch

PK_KS = tuple(range(5, 201, 5))


def n_relevant(q_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    uniq, counts = np.unique(db_labels, return_counts=True)
    pos = np.searchsorted(uniq, q_labels)
    pos = np.clip(pos, 0, len(uniq) - 1)
    return np.where(uniq[pos] == q_labels, counts[pos], 0)


def average_precision_at_k(rel: np.ndarray, n_rel: np.ndarray, k: int,
                           variant: str = "standard") -> np.ndarray:
    """AP@K per query from the relevance of the ranked list rel [Q, >= k]: normalised by the
    relevant hits in the top K ("standard") or by min(K, R) ("ir")."""
    rel = rel[:, :k].astype(np.float64)
    precision = np.cumsum(rel, 1) / np.arange(1, rel.shape[1] + 1)
    denom = rel.sum(1) if variant == "standard" else np.minimum(n_rel, k)
    return np.where(denom > 0, (precision * rel).sum(1) / np.maximum(denom, 1), 0.0)


def authors_average_precision(rel_full: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """The authors' variant per query; needs the relevance of the WHOLE ranking [Q, N]."""
    out = np.zeros(rel_full.shape[0])
    for q in range(rel_full.shape[0]):
        total = int(min(k, n_rel[q]))
        if total == 0:
            continue
        positions = np.flatnonzero(rel_full[q])[:total] + 1.0
        out[q] = np.mean(np.arange(1, total + 1) / positions)
    return out


def precision_at(rel: np.ndarray, ks: Sequence[int]) -> list[float]:
    """Mean P@K over queries for each K (eq. 11); K beyond the database counts missing as 0."""
    hits = np.cumsum(rel.astype(np.float64), 1)
    out = []
    for k in ks:
        got = hits[:, min(k, hits.shape[1]) - 1] if hits.shape[1] else np.zeros(len(hits))
        out.append(float(np.mean(got / k)))
    return out


def evaluate_direction(query: np.ndarray, database: np.ndarray, q_labels: np.ndarray,
                       db_labels: np.ndarray, k: int = 20, variant: str = "standard",
                       pk_ks: Sequence[int] = PK_KS) -> dict:
    """mAP@k and the P@K curve for packed query codes against packed database codes."""
    if variant not in VARIANTS:
        raise ValueError(f"map variant must be one of {VARIANTS} (got {variant!r})")
    if len(query) == 0 or len(database) == 0:
        raise ValueError("evaluation needs at least one query and one database item")
    dist = hamming_packed(query, database)
    depth = None if variant == "authors" else max(k, max(pk_ks, default=k))
    order = rank(dist, depth)
    rel = np.asarray(q_labels)[:, None] == np.asarray(db_labels)[order]
    n_rel = n_relevant(np.asarray(q_labels), np.asarray(db_labels))
    ap = (authors_average_precision(rel, n_rel, k) if variant == "authors"
          else average_precision_at_k(rel, n_rel, k, variant))
    return {"map": float(ap.mean()), "k": k, "variant": variant, "queries": len(query),
            "database": len(database), "pk_ks": list(pk_ks), "pk": precision_at(rel, pk_ks)}


def map_at_k_torch(query: torch.Tensor, database: torch.Tensor, q_labels: torch.Tensor,
                   db_labels: torch.Tensor, k: int = 20, variant: str = "standard",
                   per_query: bool = False) -> torch.Tensor:
    """mAP@k ("standard" or "ir") on the device from continuous codes (signs taken here);
    returns a 0-d tensor (or, with `per_query`, each query's AP), so model selection during
    training needs one host sync per evaluation, not per batch."""
    qs = torch.where(query >= 0, 1.0, -1.0)
    ds = torch.where(database >= 0, 1.0, -1.0)
    k_bits = qs.shape[1]
    dist = ((k_bits - qs @ ds.T) / 2).round().to(torch.int64)
    order = rank_torch(dist, k, k_bits)
    rel = (q_labels[:, None] == db_labels[order]).float()
    precision = rel.cumsum(1) / torch.arange(1, rel.shape[1] + 1, device=rel.device)
    if variant == "standard":
        denom = rel.sum(1)
    else:
        denom = (q_labels[:, None] == db_labels[None, :]).sum(1).float().clamp(max=k)
    ap = torch.where(denom > 0, (precision * rel).sum(1) / denom.clamp(min=1), 0.0)
    return ap if per_query else ap.mean()
