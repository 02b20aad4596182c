"""Cross-modal evaluation of packed hash codes: I->T, T->I, I->I, T->T on the query/retrieval
split, mAP@K (standard or the authors' variant) and P@K curves."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from duchkit.hashing.metrics import PK_KS, evaluate_direction

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image"),
              "i2i": ("image", "image"), "t2t": ("text", "text")}


def evaluate_codes(codes: dict[str, np.ndarray], keys: dict[str, np.ndarray],
                   splits: dict[str, np.ndarray], k: int = 20, variant: str = "standard",
                   pk_ks: Sequence[int] = PK_KS) -> dict[str, dict]:
    """codes[m]: packed codes of modality m ("image", "text"); keys[m]: relevance keys (class
    ids, or image ids for paired relevance); splits[m]: the split name of each item. Queries are
    the "query" items, the database the "retrieval" items."""
    out = {}
    for name, (qm, dm) in DIRECTIONS.items():
        q, d = splits[qm] == "query", splits[dm] == "retrieval"
        out[name] = evaluate_direction(codes[qm][q], codes[dm][d], keys[qm][q], keys[dm][d], k,
                                       variant, pk_ks)
    return out


def markdown_table(results: dict[str, dict], title: str) -> str:
    k = next(iter(results.values()))["k"]
    variant = next(iter(results.values()))["variant"]
    lines = [f"## {title}", "", f"mAP@{k} ({variant}); P@K at K = 20, 100, 200", "",
             "| task | queries | database | mAP@%d | P@20 | P@100 | P@200 |" % k,
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        pk = dict(zip(r["pk_ks"], r["pk"]))
        cells = [f"{pk[x]:.3f}" if x in pk else "-" for x in (20, 100, 200)]
        lines.append(f"| {name.upper().replace('2', '->')} | {r['queries']} | {r['database']} | "
                     f"{r['map']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pk(results: dict[str, dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.plot(r["pk_ks"], r["pk"], marker=".", label=name.upper().replace("2", "->"))
    ax.set_xlabel("K (retrieved items)")
    ax.set_ylabel("precision@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
