"""The study's figures: mAP against a swept parameter (one panel per series) and P@K."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from duchkit.pipelines.study import TASKS, Study


def study_plots(study: Study, rows: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    series = sorted({c.series for c in study.cells if c.series and c.x is not None})
    if series:  # U-curves / sensitivity curves: mAP against x, one panel per series
        fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False)
        for ax, name in zip(axes[0], series):
            cells = sorted((c for c in study.cells if c.series == name), key=lambda c: c.x)
            xs = [c.x for c in cells]
            for task, label in (("i2t", "I→T"), ("t2i", "T→I")):
                means = [np.mean([r[f"{task}_map"] for r in rows if r["cell"] == c.id] or [np.nan])
                         for c in cells]
                ax.plot(xs, means, marker="o", label=label)
            ax.set_title(name)
            ax.set_xlabel(name)
            ax.set_ylabel(f"mAP@{rows[0]['k'] if rows else 20}")
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = folder / "curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    # P@K curves of the first seed of every cell (I→T and T→I)
    out = study.pipeline.run.out
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    drawn = False
    for cell in study.cells[:12]:
        path = out / "study" / study.name / cell.id / f"seed-{study.seeds[0]}" / "metrics.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())["results"]
        for ax, task in zip(axes, TASKS):
            ax.plot(res[task]["pk_ks"], res[task]["pk"], label=cell.label)
        drawn = True
    if drawn:
        for ax, title in zip(axes, ("I→T", "T→I")):
            ax.set_title(f"P@K, {title}")
            ax.set_xlabel("K")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = folder / "pk_curves.png"
        fig.savefig(path, dpi=110)
        made.append(path)
    plt.close(fig)
    return made
