"""The study report: a table laid out like the paper's (Markdown and a self-contained HTML
page with galleries), every cell x seed as CSV, and study.json.

Per cell: mean ± std over seeds, and the paired difference to its reference cell over the
same seeds (pipelines/stats.py) with a 95% t-interval, in bold where the interval excludes 0.
Then the cells that failed and why, what --dataset carried, every model used (from the stage
manifests, back to the records), the variants' stages, the figures, and in the HTML page the
galleries (captions, image views, retrieval; pipelines/galleries.py).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from duchkit.pipelines.report_html import render as render_html
from duchkit.pipelines.stats import (format_difference, format_mean_std, paired_difference)
from duchkit.pipelines.store import atomic_write_bytes, atomic_write_json
from duchkit.pipelines.study import (PROTOCOL_TEXT, TASKS, Cell, Study, paper_dataset,
                                     paper_shown, stage_chain, train_value)
from duchkit.pipelines.study_plots import study_plots

MIN_SEEDS = 3  # below this the report says the intervals are wide or missing


def mean_std(values: list[float]) -> str:
    return format_mean_std(values)


def stage_models(out: Path, name: str) -> str:
    path = out / name / "_manifest.json"
    if not path.exists():
        return "-"
    m = json.loads(path.read_text())
    return ", ".join(f"{v}" for v in (m.get("models") or {}).values()) or m.get("kind", "-")


def models_used(study: Study) -> list[tuple[str, str, dict[str, str]]]:
    """(stage, kind, {role: model}) for every stage with a model in the cells' chains, in
    pipeline order: from the stage's manifest, else (a stage that did not complete) from the
    stage's configuration."""
    out = study.pipeline.run.out
    wanted = {s for c in study.cells for n in (c.text_stage, c.image_stage)
              for s in stage_chain(study, n)}
    found = []
    entries = {e.name: e for e in study.pipeline.stages}
    order = [e.name for e in study.pipeline.stages] + sorted(wanted - set(entries))
    for name in order:
        if name not in wanted:
            continue
        path = out / name / "_manifest.json"
        if path.exists():
            m = json.loads(path.read_text())
            models, kind = dict(m.get("models") or {}), m.get("kind", "")
            runtime = (m.get("parameters") or {}).get("runtime", "torch")
            if models and runtime != "torch":  # what ran the encoder, beside what it is
                models["runtime"] = runtime
        elif name in entries:
            kind = entries[name].stage.kind
            try:
                models = dict(entries[name].stage.models())
            except Exception:  # noqa: BLE001  (a model that cannot be found: say what was asked)
                params = entries[name].stage.params()
                models = {k: f"{v} (not loaded)" for k, v in params.items()
                          if isinstance(v, str) and v and any(
                              w in k for w in ("model", "vectors", "tagger", "backend"))}
        else:
            continue
        if kind == "rule-augment" and name in entries:  # the tagger's backend, too
            models.setdefault("tagger", getattr(entries[name].stage, "tagger", ""))
        if models:
            found.append((name, kind, models))
    return found


def _references(study: Study) -> str:
    pairs = []
    for c in study.cells:
        if c.reference:
            ref = study.cell(c.reference)
            text = f"{c.group or 'all'}: {ref.label}"
            if text not in pairs:
                pairs.append(text)
    return "; ".join(pairs)


def difference(cell: Cell, by_cell: dict[str, list[dict]], task: str) -> str:
    if not cell.reference:
        return "reference"
    values = {r["seed"]: r[f"{task}_map"] for r in by_cell.get(cell.id, [])}
    ref = {r["seed"]: r[f"{task}_map"] for r in by_cell.get(cell.reference, [])}
    return format_difference(paired_difference(values, ref))


def differences(study: Study, rows: list[dict]) -> list[dict]:
    """Per listed cell with a reference (an equal cell may be listed in two groups, against
    two references): the paired difference in each direction as plain numbers."""
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r)
    out = []
    for c in study.cells:
        if not c.reference:
            continue
        entry = {"cell": c.id, "label": c.label, "group": c.group, "reference": c.reference}
        for task in TASKS:
            d = paired_difference({r["seed"]: r[f"{task}_map"] for r in by_cell.get(c.id, [])},
                                  {r["seed"]: r[f"{task}_map"]
                                   for r in by_cell.get(c.reference, [])})
            entry[task] = None if d is None else {
                "seeds": d.n, "mean": d.mean, "std": d.std, "low": d.low, "high": d.high,
                "real": d.real, "confidence": d.confidence}
        out.append(entry)
    return out


def write_report(study: Study, rows: list[dict], timing: dict,
                 failed: dict[str, str] | None = None) -> Path:
    out = study.pipeline.run.out
    failed = failed or {}
    folder = out / "study" / study.name
    folder.mkdir(parents=True, exist_ok=True)
    k = rows[0]["k"] if rows else 20
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r)
    paper = study.paper_archive
    shown = bool(paper) and paper_shown(study)
    lines = [f"# {study.title}", "",
             f"Protocol: {study.protocol}, {PROTOCOL_TEXT[study.protocol]}",
             f"mAP@{k} (standard AP@K, validation-selected epoch), mean ± std over seeds "
             f"{study.seeds}; class-label relevance; split 50/10/40 by image, drawn by the seed.",
             "Δ: the paired difference to the reference cell over the same seeds (so the same "
             "splits), mean [95% t-interval]; **bold**: the interval excludes 0, a real "
             f"difference at this number of seeds. Reference: {_references(study) or '-'}.",
             f"Dataset: {study.pipeline.dataset.name} "
             f"({Path(study.pipeline.dataset.captions).resolve()}).", ""]
    if paper and not shown:  # a figure of another archive is no yardstick for these cells
        lines[-1:-1] = [f"Paper figures not shown: they are {paper_dataset(study)}'s and this "
                        f"study runs on {study.pipeline.dataset.name} (`[dataset] name` says "
                        "which archive a dataset is)."]
    head = "| group | setup | bits | seeds | I→T | Δ I→T | T→I | Δ T→I |"
    sep = "|---|---|---|---|---|---|---|---|"
    if shown:
        head += f" I→T paper ({paper}) | T→I paper ({paper}) |"
        sep += "---|---|"
    elif paper:
        head += (f" paper: {paper_dataset(study)}; this study: "
                 f"{study.pipeline.dataset.name} |")
        sep += "---|"
    lines += [head, sep]
    for cell in study.cells:
        rs = by_cell.get(cell.id, [])
        if not rs and cell.id in failed:
            vals = ["failed", "-", "failed", "-"]
        else:
            vals = [mean_std([r["i2t_map"] for r in rs]), difference(cell, by_cell, "i2t"),
                    mean_std([r["t2i_map"] for r in rs]), difference(cell, by_cell, "t2i")]
        line = (f"| {cell.group} | {cell.label} | {train_value(cell, 'bits')} | {len(rs)} | "
                + " | ".join(vals) + " |")
        if shown:
            line += "".join(f" {cell.paper[t]:.3f} |" if t in cell.paper else " - |"
                            for t in TASKS)
        elif paper:
            line += " not shown |" if cell.paper else " - |"
        lines.append(line)
    if len(study.seeds) < MIN_SEEDS:
        lines += ["", f"Only {len(study.seeds)} seed(s): the intervals are wide (2 seeds) or "
                  f"missing (1); `--seeds 0,1,2` adds what is missing."]
    if failed:
        lines += ["", "## Failed cells", ""]
        shown = set()
        for cell in study.cells:
            if cell.id in failed and cell.id not in shown:
                shown.add(cell.id)
                lines.append(f"- {cell.label} ({cell.group}): {failed[cell.id]}")
    if study.notes:
        lines += ["", "## Settings from --dataset", ""] + [f"- {n}" for n in study.notes]
    lines += ["", "## Models", ""]
    for name, kind, models in models_used(study):
        lines.append(f"- {kind} (`{name}`): " + ", ".join(
            f"{role} `{value}`" for role, value in models.items()))
    lines += ["", "## Variants", ""]
    seen = set()
    for cell in study.cells:
        for variant, name in ((cell.text_variant, cell.text_stage),
                              (cell.image_variant, cell.image_stage)):
            if name not in seen:
                seen.add(name)
                chain = " ← ".join(f"`{s}`" for s in stage_chain(study, name)) or f"`{name}`"
                lines.append(f"- {variant or 'inline'}: {chain}")
    lines += ["", f"Stages: {timing['stages_seconds']} s; training + evaluation: "
              f"{timing['train_eval_seconds']} s for {timing['runs_trained']} new run(s).",
              f"Every cell x seed: `{(folder / 'cells.csv').name}`; captions, image views and "
              "retrieval examples: `report.html`.", ""]
    plots = study_plots(study, rows, folder)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    report = folder / "report.md"
    markdown = "\n".join(lines) + "\n"
    atomic_write_bytes(report, markdown.encode())
    # the same report as one self-contained page (plots and galleries inlined)
    atomic_write_bytes(folder / "report.html",
                       render_html(markdown, folder, study.title,
                                   study_galleries(study, rows)).encode())
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(folder / "cells.csv", buf.getvalue().encode())
    atomic_write_json(folder / "study.json", {
        "name": study.name, "title": study.title, "seeds": study.seeds, "source": study.source,
        "protocol": study.protocol, "paper_shown": shown,
        "cells": [c.__dict__ for c in study.cells], "failed": failed, "notes": study.notes,
        "differences": differences(study, rows),
        "timing": {k: v for k, v in timing.items() if k != "manifests"},
        "stages": {n: {"shards_computed": m.get("shards_computed"),
                       "shards_reused": m.get("shards_reused")}
                   for n, m in timing["manifests"].items()}})
    return report


def study_galleries(study: Study, rows: list[dict]) -> list[str]:
    """Captions of the text variants, views of the image variants, and the retrieval of the
    best cell and of the cell it is compared with (its reference, or when it is a reference
    itself, the best cell compared with it), first seed, as HTML sections."""
    from duchkit.pipelines.galleries import caption_gallery, retrieval_gallery, view_gallery

    out = study.pipeline.run.out
    entries = {e.name: e for e in study.pipeline.stages}
    text_dirs, image_dirs, seen = [], [], set()
    for cell in study.cells:
        for name, variant in ((cell.text_stage, cell.text_variant),
                              (cell.image_stage, cell.image_variant)):
            for s in stage_chain(study, name):
                if s in seen or not (out / s / "_manifest.json").exists():
                    continue
                seen.add(s)
                kind = entries[s].stage.kind if s in entries else ""
                if kind in ("rule-augment", "backtranslate"):
                    text_dirs.append(out / s)
                elif kind == "augment-images":
                    image_dirs.append((variant or getattr(entries[s].stage, "augmentation", s),
                                       out / s))
    sections = []
    try:
        sections.append(caption_gallery(text_dirs))
        sections.append(view_gallery(image_dirs))
        if rows:
            score: dict[str, list[float]] = {}
            for r in rows:
                score.setdefault(r["cell"], []).append(r["i2t_map"] + r["t2i_map"])
            best = max(score, key=lambda c: sum(score[c]) / len(score[c]))
            shown = [best]
            ref = study.cell(best).reference
            if ref and ref in score:
                shown.append(ref)
            else:
                against = [c.id for c in study.cells if c.reference == best and c.id in score]
                if against:
                    shown.append(max(against, key=lambda c: sum(score[c]) / len(score[c])))
            seed = next(s for s in study.seeds
                        if (out / "study" / study.name / best / f"seed-{s}").is_dir())
            for cid in shown:
                run = out / "study" / study.name / cid / f"seed-{seed}"
                label = study.cell(cid).label
                tag = ("best cell" if cid == best else "its reference" if cid == ref
                       else "compared with it")
                sections.append(retrieval_gallery(run, title=f"{label} ({tag}), seed {seed}"))
    except Exception:  # noqa: BLE001  (a gallery that cannot be drawn never loses the report)
        import logging

        logging.getLogger("duchkit").exception("study %s: a report gallery failed", study.name)
    return [s for s in sections if s]
