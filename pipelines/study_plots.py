"""The study's figures: mAP against a swept parameter (one panel per series, mean ± std over
seeds) and P@K (mean over seeds, K up to the size of the database)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from duchkit.pipelines.study import TASKS, Study


def pk_mean(study: Study, cell_id: str, task: str) -> tuple[list[int], np.ndarray] | None:
    """P@K of a cell in one direction averaged over its seeds, for the K the database can
    fill (K <= database size): beyond it P@K only counts the missing items."""
    out = study.pipeline.run.out
    curves = []
    ks: list[int] = []
    for seed in study.seeds:
        path = out / "study" / study.name / cell_id / f"seed-{seed}" / "metrics.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())["results"][task]
        n = res.get("database") or max(res["pk_ks"])
        pairs = [(k, p) for k, p in zip(res["pk_ks"], res["pk"]) if k <= n]
        if not ks:
            ks = [k for k, _ in pairs]
        curves.append([p for _, p in pairs][:len(ks)])
    if not curves or not ks:
        return None
    m = min(len(c) for c in curves)
    return ks[:m], np.mean([c[:m] for c in curves], axis=0)


def study_plots(study: Study, rows: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    k = rows[0]["k"] if rows else 20
    series = sorted({c.series for c in study.cells if c.series and c.x is not None})
    if series:  # U-curves / sensitivity curves: mAP against x, one panel per series
        fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
        for ax, name in zip(axes[0], series):
            cells = sorted((c for c in study.cells if c.series == name), key=lambda c: c.x)
            xs = [c.x for c in cells]
            for task, label in (("i2t", "I→T"), ("t2i", "T→I")):
                vals = [[r[f"{task}_map"] for r in rows if r["cell"] == c.id] for c in cells]
                means = [np.mean(v) if v else np.nan for v in vals]
                stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
            ax.set_title(name)
            ax.set_xlabel(name)
            ax.set_ylabel(f"mAP@{k} (mean ± std over seeds)")
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = folder / "curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    # P@K curves of every cell (up to 12), mean over its seeds, I→T and T→I
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    drawn = False
    seen: set[str] = set()
    for cell in study.cells:
        if cell.id in seen or len(seen) == 12:
            continue
        seen.add(cell.id)
        for ax, task in zip(axes, TASKS):
            curve = pk_mean(study, cell.id, task)
            if curve is not None:
                ax.plot(curve[0], curve[1], marker=".", label=cell.label)
                drawn = True
    if drawn:
        for ax, title in zip(axes, ("I→T", "T→I")):
            ax.set_title(f"P@K, {title} (mean over seeds)")
            ax.set_xlabel("K (up to the database size)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = folder / "pk_curves.png"
        fig.savefig(path, dpi=110)
        made.append(path)
    plt.close(fig)
    return made
