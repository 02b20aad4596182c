"""The study report: a table laid out like the paper's (Markdown and a self-contained HTML
page), every cell x seed as CSV, and study.json."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from duchkit.pipelines.report_html import render as render_html
from duchkit.pipelines.store import atomic_write_bytes, atomic_write_json
from duchkit.pipelines.study import TASKS, Study, train_value
from duchkit.pipelines.study_plots import study_plots


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values)
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def stage_models(out: Path, name: str) -> str:
    path = out / name / "_manifest.json"
    if not path.exists():
        return "-"
    m = json.loads(path.read_text())
    return ", ".join(f"{v}" for v in (m.get("models") or {}).values()) or m.get("kind", "-")


def write_report(study: Study, rows: list[dict], timing: dict) -> Path:
    out = study.pipeline.run.out
    folder = out / "study" / study.name
    folder.mkdir(parents=True, exist_ok=True)
    k = rows[0]["k"] if rows else 20
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r)
    paper = study.paper_archive
    lines = [f"# {study.title}", "",
             f"mAP@{k} (standard AP@K, validation-selected epoch), mean ± std over seeds "
             f"{study.seeds}; class-label relevance; split 50/10/40 by image.",
             f"Dataset: {study.pipeline.dataset.name} ({study.pipeline.dataset.captions}).", ""]
    head = "| group | setup | bits | seeds | I→T | T→I |"
    sep = "|---|---|---|---|---|---|"
    if paper:
        head += f" I→T paper ({paper}) | T→I paper ({paper}) |"
        sep += "---|---|"
    lines += [head, sep]
    for cell in study.cells:
        rs = by_cell.get(cell.id, [])
        line = (f"| {cell.group} | {cell.label} | {train_value(cell, 'bits')} | {len(rs)} | "
                f"{mean_std([r['i2t_map'] for r in rs])} | "
                f"{mean_std([r['t2i_map'] for r in rs])} |")
        if paper:
            line += "".join(f" {cell.paper[t]:.3f} |" if t in cell.paper else " - |"
                            for t in TASKS)
        lines.append(line)
    lines += ["", "## Inputs", ""]
    seen = set()
    for cell in study.cells:
        for name in (cell.text_stage, cell.image_stage):
            if name not in seen:
                seen.add(name)
                lines.append(f"- `{name}`: {stage_models(out, name)}")
    lines += ["", f"Stages: {timing['stages_seconds']} s; training + evaluation: "
              f"{timing['train_eval_seconds']} s for {timing['runs_trained']} new run(s).",
              f"Every cell x seed: `{(folder / 'cells.csv').name}`.", ""]
    plots = study_plots(study, rows, folder)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    report = folder / "report.md"
    markdown = "\n".join(lines) + "\n"
    atomic_write_bytes(report, markdown.encode())
    # the same report as one self-contained page (plots inlined) for a browser or a notebook
    atomic_write_bytes(folder / "report.html",
                       render_html(markdown, folder, study.title).encode())
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(folder / "cells.csv", buf.getvalue().encode())
    atomic_write_json(folder / "study.json", {
        "name": study.name, "title": study.title, "seeds": study.seeds, "source": study.source,
        "cells": [c.__dict__ for c in study.cells],
        "timing": {k: v for k, v in timing.items() if k != "manifests"},
        "stages": {n: {"shards_computed": m.get("shards_computed"),
                       "shards_reused": m.get("shards_reused")}
                   for n, m in timing["manifests"].items()}})
    return report
