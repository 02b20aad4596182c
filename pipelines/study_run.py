"""Run a study: the shared stages once, then every missing cell x seed; collect the results.

    result = run_study(prepare_study("demo"))      # {"rows", "report", "trained", "failed"}

A stage that fails (a hub model that cannot be loaded, a missing package) fails the cells that
need it, and only those: the stages that do not depend on it run, the other cells train, and
the report lists each failed cell with the reason (the traceback is in duchkit.log). A cell x
seed whose training fails is reported the same way. A rerun retries what failed.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from typing import Any

from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.study import DEFAULT_PROTOCOL, Cell, Study, stage_chain, train_value
from duchkit.pipelines.study_report import write_report

log = logging.getLogger("duchkit")


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


def reason_of(exc: BaseException) -> str:
    """One line for the report: the exception's last message line, with its type when the
    message alone does not say what went wrong."""
    text = (str(exc).strip().splitlines() or [""])[-1][:400]
    if isinstance(exc, ConfigError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_study_stages(study: Study, progress: bool = True
                     ) -> tuple[dict[str, dict], dict[str, str]]:
    """The records, then every stage of the study in order; a stage whose input failed is not
    run. Returns (manifests of the stages that completed, {failed stage: reason})."""
    from duchkit.pipelines.config import SOURCE_STAGE
    from duchkit.pipelines.runner import ingest, plan_stage, resolve_device, run_stage
    from duchkit.pipelines.stage import StageContext
    from duchkit.pipelines.store import StageStore

    config = study.pipeline
    out = config.run.out
    device = resolve_device(config.run.device)  # before anything is written
    manifests = {SOURCE_STAGE: ingest(config.dataset, out, config.run.shard_rows,
                                      config.run.lenient)}
    ctx = StageContext(seed=config.run.seed, device=device, log=log)
    failed: dict[str, str] = {}
    for entry in config.stages:
        if entry.input in failed:
            failed[entry.name] = f"its input stage {entry.input!r} failed"
            continue
        try:
            if plan_stage(entry, out, ctx.seed).status == "complete":  # no model is loaded
                m = StageStore(out / entry.name).manifest()
                manifests[entry.name] = {**m, "shards_computed": 0,
                                         "shards_reused": len(m["shards"])}
                continue
            manifests[entry.name] = run_stage(entry, out, ctx, config.run.workers,
                                              config.run.engine, progress,
                                              config.run.ray_address)
        except Exception as exc:  # noqa: BLE001  (any failure fails this stage's cells only)
            log.exception("study %s: stage %s (%s) failed", study.name, entry.name,
                          entry.stage.kind)
            failed[entry.name] = f"stage {entry.name} ({entry.stage.kind}): {reason_of(exc)}"
    return manifests, failed


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to n (None: unchanged) inside the block."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_study(study: Study, progress: bool, say) -> dict[str, Any]:
    from duchkit.pipelines.runner import resolve_device, setup_logging

    out = study.pipeline.run.out
    setup_logging(out)
    for note in study.notes:
        log.info("study %s: %s", study.name, note)
    start = time.perf_counter()
    manifests, failed_stages = run_study_stages(study, progress)
    stages_s = time.perf_counter() - start
    device = resolve_device(study.pipeline.run.device)
    failed: dict[str, str] = {}  # cell id -> reason
    t_train = time.perf_counter()
    with torch_threads(study.threads):
        trained = _train_cells(study, device, failed_stages, failed, say)
    train_s = time.perf_counter() - t_train
    rows = collect(study)
    report = write_report(study, rows, {"stages_seconds": round(stages_s, 2),
                                        "train_eval_seconds": round(train_s, 2),
                                        "runs_trained": trained, "manifests": manifests},
                          failed)
    return {"rows": rows, "report": report, "trained": trained, "failed": failed}


def _train_cells(study: Study, device: str, failed_stages: dict[str, str],
                 failed: dict[str, str], say) -> int:
    """Train every missing cell x seed, in this process or in `study.workers` processes; the
    failures go into `failed`. Returns the runs trained."""
    out = study.pipeline.run.out
    jobs = []
    for cell in study.cells:
        if cell.id in failed or any(j[0].id == cell.id for j in jobs):
            continue
        broken = [failed_stages[s] for name in (cell.text_stage, cell.image_stage)
                  for s in stage_chain(study, name) if s in failed_stages]
        if broken:
            failed[cell.id] = broken[-1]  # the first failure up the chain
            say(f"study {study.name}: {cell.label} FAILED: {failed[cell.id]}")
            continue
        for seed in study.seeds:
            run_dir = out / "study" / study.name / cell.id / f"seed-{seed}"
            if not (run_dir / "metrics.json").exists():
                jobs.append((cell, seed, run_dir))
    trained = 0

    def failure(cell: Cell, seed: int, exc: BaseException) -> None:
        log.error("study %s: cell %s seed %d failed", study.name, cell.label, seed,
                  exc_info=exc)
        failed.setdefault(cell.id, f"seed {seed}: {reason_of(exc)}")
        say(f"study {study.name}: {cell.label} seed {seed} FAILED: {reason_of(exc)}")

    if study.workers > 1 and len(jobs) > 1 and device == "cpu":
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from duchkit.pipelines.view_loader import loader_context

        with ProcessPoolExecutor(min(study.workers, len(jobs)), mp_context=loader_context(),
                                 initializer=_init_train_worker,
                                 initargs=(out, study.threads or 1)) as pool:
            futures = {pool.submit(_train_job, out / cell.image_stage, out / cell.text_stage,
                                   cell, seed, device, run_dir): (cell, seed)
                       for cell, seed, run_dir in jobs}
            for fut in as_completed(futures):
                cell, seed = futures[fut]
                try:
                    fut.result()
                    trained += 1
                    say(f"study {study.name}: {cell.label} seed {seed}")
                except Exception as exc:  # noqa: BLE001  (reported, the other cells go on)
                    failure(cell, seed, exc)
        return trained
    try:
        for cell, seed, run_dir in jobs:
            if cell.id in failed:  # a seed of this cell failed: the report says which and why
                continue
            try:
                say(f"study {study.name}: {cell.label} seed {seed}")
                _train_job(out / cell.image_stage, out / cell.text_stage, cell, seed, device,
                           run_dir)
                trained += 1
            except Exception as exc:  # noqa: BLE001  (one cell's failure is reported)
                failure(cell, seed, exc)
    finally:
        _ARCHIVES.clear()  # a later study may find other shards under the same stage names
    return trained


_ARCHIVES: dict[tuple, Any] = {}  # loaded archives, per process


def _init_train_worker(out, threads: int) -> None:
    import torch

    from duchkit.pipelines.runner import setup_logging
    from duchkit.pipelines.worker_guard import die_with_parent

    die_with_parent()
    torch.set_num_threads(threads)
    setup_logging(out)


def _train_job(images_dir, texts_dir, cell: Cell, seed: int, device: str, run_dir) -> None:
    """Train and evaluate one cell x seed into run_dir (resuming its checkpoint if any)."""
    from duchkit.pipelines.training import train_run
    from duchkit.pipelines.training_data import load_archive

    key = (str(images_dir), str(texts_dir))
    if key not in _ARCHIVES:
        _ARCHIVES.clear()  # one archive at a time: cells come grouped by their inputs
        _ARCHIVES[key] = load_archive(images_dir, texts_dir)
    cfg = cell_train_config(cell, seed, device)
    resume = (run_dir / "checkpoint.pt").exists()  # an interrupted cell is resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    train_run(_ARCHIVES[key], cfg, run_dir, resume=resume, say=lambda s: None)


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
            metrics = json.loads(path.read_text())
            if study.protocol != DEFAULT_PROTOCOL and not str(
                    metrics.get("captions", "")).startswith("one"):
                # a paper-protocol run codes one caption per image: its own evaluation is the
                # one-caption one; anything else is not a figure of this protocol
                raise ConfigError(f"{path}: scored on {metrics.get('captions')!r} captions, not "
                                  f"one per image as protocol {study.protocol!r} is")
            res = metrics["results"]
            row = {"cell": cell.id, "label": cell.label, "group": cell.group, "seed": seed,
                   "text_stage": cell.text_stage, "image_stage": cell.image_stage,
                   "ablation": cell.ablation, "method": train_value(cell, "method"),
                   "bits": train_value(cell, "bits"),
                   "series": cell.series, "x": cell.x}
            for task in ("i2t", "t2i", "i2i", "t2t"):
                row[f"{task}_map"] = res[task]["map"]
            row["k"] = res["i2t"]["k"]
            rows.append(row)
    return rows
