"""Choose training settings on the validation slice of the archive at hand, not on UCM.

    best, trials = tune(TrainConfig(bits=64), features, budget_s=600)

Optuna's TPE sampler (seeded by the config's seed) searches the settings whose best value
depended on the archive in our measurements: the learning rate, the weight decay and how it is
applied (Adam's coupled L2 or AdamW's decoupled decay), the loss reduction, the NT-Xent
temperature and the epoch count. Each trial trains on the train part and is scored by the
validation mAP it selects (hashing.train.validation_map: the validation slice queried against
itself and train images); the query and retrieval items never enter a trial, so they cannot
influence the choice. The search stops at the time budget or after `trials` trials, whichever
comes first; with a trial cap and no budget it is reproducible by seed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from duchkit.hashing.config import TrainConfig
from duchkit.hashing.data import Features

# name -> how a trial draws it (Optuna's suggest_* calls)
SPACE = {
    "lr": lambda t: t.suggest_float("lr", 1e-5, 1e-3, log=True),
    "weight_decay": lambda t: t.suggest_float("weight_decay", 1e-7, 1e-2, log=True),
    "weight_decay_mode": lambda t: t.suggest_categorical("weight_decay_mode",
                                                         ["coupled", "decoupled"]),
    "reduction": lambda t: t.suggest_categorical("reduction", ["mean", "sum"]),
    "tau": lambda t: t.suggest_float("tau", 0.2, 2.0, log=True),
    "epochs": lambda t: t.suggest_int("epochs", 20, 150, step=10),
}


def tune(cfg: TrainConfig, feats: Features, budget_s: float = 600.0, trials: int | None = None,
         log: Callable[[str], None] = print) -> tuple[TrainConfig, list[dict]]:
    """The best config found (cfg with the chosen values) and every trial (params, validation
    mAP, seconds). Today's config is trial 0, so tuning never does worse on validation."""
    import optuna

    from duchkit.hashing.train import train

    cfg.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({k: getattr(cfg, k) for k in SPACE})  # today's defaults first
    records: list[dict] = []

    def objective(trial) -> float:
        values = {name: draw(trial) for name, draw in SPACE.items()}
        trial_cfg = dataclasses.replace(cfg, **values, checkpoint_every=10_000)
        t0 = time.perf_counter()
        result = train(trial_cfg, feats, log=lambda s: None)
        records.append({"trial": trial.number, "params": values,
                        "val_map": round(result.best_val_map, 5),
                        "best_epoch": result.best_epoch,
                        "seconds": round(time.perf_counter() - t0, 2)})
        log(f"tune: trial {trial.number} validation mAP {result.best_val_map:.4f} {values}")
        return result.best_val_map

    study.optimize(objective, n_trials=trials, timeout=budget_s if budget_s > 0 else None)
    best = max(records, key=lambda r: (r["val_map"], -r["trial"]))
    log(f"tune: {len(records)} trial(s); chose trial {best['trial']} (validation mAP "
        f"{best['val_map']:.4f}): {best['params']}")
    return dataclasses.replace(cfg, **best["params"]), records
