"""Run a study: the shared stages once, then every missing cell x seed; collect the results.

    result = run_study(prepare_study("demo"))      # {"rows", "report", "trained"}
"""
from __future__ import annotations

import json
import time
from typing import Any

from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.study import Cell, Study, train_value
from duchkit.pipelines.study_report import write_report


def cell_train_config(cell: Cell, seed: int, device: str):
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
    """Compute the shared stages once, then every missing cell x seed; write the report. One
    writer per output folder."""
    from duchkit.pipelines.folder_lock import folder_lock

    with folder_lock(study.pipeline.run.out, f"duchkit study {study.name}"):
        return _run_study(study, progress, say)


def _run_study(study: Study, progress: bool, say) -> dict[str, Any]:
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
            cfg = cell_train_config(cell, seed, device)
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
                   "ablation": cell.ablation, "bits": train_value(cell, "bits"),
                   "series": cell.series, "x": cell.x}
            for task in ("i2t", "t2i", "i2i", "t2t"):
                row[f"{task}_map"] = res[task]["map"]
            row["k"] = res["i2t"]["k"]
            rows.append(row)
    return rows
