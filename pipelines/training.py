"""Train DUCH (or a baseline, TrainConfig.method) on an archive of embedding stages and write
the run folder (run_folder.py).

    archive = load_archive(images_dir, texts_dir)         # pipelines.training_data
    metrics = train_run(archive, TrainConfig(bits=64), Path("runs/a"))

`duchkit train` and the study call this; the loop itself is duchkit.hashing.train.
"""
from __future__ import annotations

import logging
from pathlib import Path

from duchkit.pipelines.evaluation import evaluate_run
from duchkit.pipelines.folder_lock import folder_lock
from duchkit.pipelines.run_folder import (CHECKPOINT, CODES, NOISE_MASK, PAIR_WEIGHTS, RUN_JSON,
                                          codes_table)
from duchkit.pipelines.stage import ConfigError

log = logging.getLogger("duchkit")


def train_run(archive, cfg, out: Path, resume: bool = False, say=print,
              tune_budget_s: float = 0.0, tune_trials: int | None = None) -> dict:
    """Train on an archive, write the run folder (checkpoint, run.json, codes/, metrics) and
    return the standard evaluation. Shared by `duchkit train` and `duchkit study`; one writer
    per run folder. With a tuning budget (seconds) or a trial count, the settings are first
    chosen on the validation slice (hashing.tune) and the trials recorded in tune.json."""
    if (tune_budget_s > 0 or tune_trials) and cfg.method != "duch":
        raise ConfigError(f"duchkit train: --tune chooses DUCH's settings (temperature, loss "
                          f"reduction, ...) by training DUCH; not with --method {cfg.method}")
    with folder_lock(out, "duchkit train"):
        tuning = None
        chosen = Path(out) / "tune.json"
        if resume and chosen.is_file():  # a tuned run resumes with the settings it chose
            import dataclasses
            import json

            cfg = dataclasses.replace(cfg, **json.loads(chosen.read_text())["chosen"])
        elif (tune_budget_s > 0 or tune_trials) and not (Path(out) / CHECKPOINT).exists():
            from duchkit.hashing.tune import tune
            from duchkit.pipelines.store import atomic_write_json

            cfg, trials = tune(cfg, archive.features, tune_budget_s, tune_trials, say)
            tuning = {"budget_s": tune_budget_s, "trials": len(trials), "file": "tune.json",
                      "chosen": {k: getattr(cfg, k) for k in trials[0]["params"]}}
            Path(out).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(out) / "tune.json", {"budget_s": tune_budget_s,
                                                         "trials": trials,
                                                         "chosen": tuning["chosen"]})
        return _train_run(archive, cfg, Path(out), resume, say, tuning)


def _train_run(archive, cfg, out: Path, resume: bool, say, tuning: dict | None = None) -> dict:
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
    noise = write_noise_and_weights(out, archive, cfg, result)
    atomic_write_json(out / RUN_JSON, {
        "config": cfg.to_json(), "inputs": archive.sources, "warnings": archive.warnings,
        "has_labels": archive.has_labels, "best_epoch": result.best_epoch,
        "best_val_map": result.best_val_map, "train_seconds": round(result.seconds, 3),
        "splits": {k: len(v) for k, v in result.splits.items()}, "history": result.history,
        "checkpoint": checkpoint_record(out), **noise,
        **({"tuning": tuning} if tuning else {})})
    say(f"trained {cfg.method.upper()} {cfg.bits} bits, selected epoch {result.best_epoch} "
        f"(validation mAP@{cfg.map_k} {result.best_val_map:.3f}) in {result.seconds:.1f} s -> "
        f"{out}")
    return evaluate_run(out, "standard", cfg.map_k, "class" if archive.has_labels else "pair",
                        echo=say is print)


def write_noise_and_weights(out: Path, archive, cfg, result) -> dict:
    """The run folder's record of wrong captions and of trust: noise_mask.parquet (which
    training images had their captions replaced), pair_weights.parquet (each training pair's
    final weight, robust runs) and weights.png (the weights of clean and noisy pairs). Returns
    what run.json says of them."""
    import numpy as np
    import pyarrow as pa

    from duchkit.pipelines.store import write_table

    info: dict = {}
    ids = np.asarray(archive.image_ids, dtype=object)
    part = np.concatenate([result.splits["train"], result.splits["val"]])
    if cfg.noise_rate > 0:
        mask = result.noise_mask
        write_table(out / NOISE_MASK, pa.table({
            "image_id": pa.array(ids[np.sort(part)].tolist(), pa.string()),
            "noisy": pa.array(mask[np.sort(part)])}))
        info["noise"] = {"rate": cfg.noise_rate, "mode": cfg.noise_mode,
                         "noisy_images": int(mask.sum()), "training_images": len(part),
                         "effective_rate": round(float(mask.sum()) / len(part), 6),
                         "mask": NOISE_MASK}
    if result.pair_weights is not None:
        train_idx = result.splits["train"]
        noisy = result.noise_mask[train_idx] if cfg.noise_rate > 0 else None
        write_table(out / PAIR_WEIGHTS, pa.table({
            "image_id": pa.array(ids[train_idx].tolist(), pa.string()),
            "weight": pa.array(result.pair_weights.astype(np.float32)),
            "disagreement": pa.array(result.pair_disagreement.astype(np.float32)),
            "injected_noise": pa.array(noisy if noisy is not None else [None] * len(train_idx),
                                       pa.bool_())}))
        last = result.history[-1] if result.history else {}
        info["robust"] = {"mode": cfg.robust, "weights": PAIR_WEIGHTS,
                          **{k: last[k] for k in ("weight_auc", "noisy_below_threshold",
                                                  "mean_weight") if k in last}}
        plot_weights(out / "weights.png", result.pair_weights, noisy, cfg.robust)
    return info


def plot_weights(path: Path, weights, noisy, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(0, 1, 41)
    if noisy is None:
        ax.hist(weights, bins=bins, color="tab:blue", label="all pairs")
    else:
        ax.hist(weights[~noisy], bins=bins, alpha=0.7, color="tab:blue", label="clean pairs")
        ax.hist(weights[noisy], bins=bins, alpha=0.7, color="tab:red", label="wrong captions")
    ax.set_xlabel("pair weight")
    ax.set_ylabel("training pairs")
    ax.set_title(f"robust = {mode}")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
