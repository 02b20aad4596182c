"""Train DUCH on an archive of embedding stages and write the run folder (run_folder.py).

    archive = load_archive(images_dir, texts_dir)         # pipelines.training_data
    metrics = train_run(archive, TrainConfig(bits=64), Path("runs/a"))

`duchkit train` and the study call this; the loop itself is duchkit.hashing.train.
"""
from __future__ import annotations

import logging
from pathlib import Path

from duchkit.pipelines.evaluation import evaluate_run
from duchkit.pipelines.folder_lock import folder_lock
from duchkit.pipelines.run_folder import CHECKPOINT, CODES, RUN_JSON, codes_table
from duchkit.pipelines.stage import ConfigError

log = logging.getLogger("duchkit")


def train_run(archive, cfg, out: Path, resume: bool = False, say=print) -> dict:
    """Train on an archive, write the run folder (checkpoint, run.json, codes/, metrics) and
    return the standard evaluation. Shared by `duchkit train` and `duchkit study`; one writer
    per run folder."""
    with folder_lock(out, "duchkit train"):
        return _train_run(archive, cfg, Path(out), resume, say)


def _train_run(archive, cfg, out: Path, resume: bool, say) -> dict:
    from duchkit.hashing.checkpoint import checkpoint_record
    from duchkit.hashing.train import train
    from duchkit.pipelines.store import atomic_write_json, write_stage_folder

    ck = out / CHECKPOINT
    if ck.exists() and not resume:
        raise ConfigError(f"duchkit train: {ck} exists; pass --resume to continue it or choose "
                          "another --out")

    def both(line: str) -> None:
        log.info(line)
        say(line)

    try:
        result = train(cfg, archive.features, out, resume=resume, log=both)
    except ValueError as exc:
        raise ConfigError(f"duchkit train: {exc}") from None
    table = codes_table(archive, result.model, cfg, result.splits)
    write_stage_folder(out / CODES, table, CODES, "duch-codes", cfg.to_json())
    atomic_write_json(out / RUN_JSON, {
        "config": cfg.to_json(), "inputs": archive.sources, "warnings": archive.warnings,
        "has_labels": archive.has_labels, "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map, "train_seconds": round(result.seconds, 3),
        "splits": {k: len(v) for k, v in result.splits.items()}, "history": result.history,
        "checkpoint": checkpoint_record(out)})
    say(f"trained {cfg.bits} bits, selected epoch {result.best_epoch} (validation mAP@{cfg.map_k} "
        f"{result.best_val_map:.3f}) in {result.seconds:.1f} s -> {out}")
    return evaluate_run(out, "standard", cfg.map_k, "class" if archive.has_labels else "pair",
                        echo=say is print)


