"""The Ray Data engine: the same shard tasks as the local engine, scheduled on a Ray cluster.

Each input shard becomes one row of a Ray Dataset; `map_batches` runs the shard task
(read shard -> stage.process -> atomic write + status file) in
- an actor pool for stages that hold a model (the stage is set up once per actor, with
  `num_gpus` per actor when the run's device is CUDA), or
- stateless tasks for CPU stages.
Because the task and the store are the local engine's, the output shards, status files and
manifests are identical, and resume works the same way. Shards must live where every Ray
worker can read and write them: a shared filesystem mounted at the same path on every node.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import pyarrow as pa

from duchkit.pipelines.engines import EngineUnavailable, ShardTask, run_shard
from duchkit.pipelines.stage import Stage, StageContext
from duchkit.pipelines.store import ShardStatus

INSTALL_HINT = ("the Ray engine needs Ray Data: pip install 'duchkit[ray]' "
                "(or pip install 'ray[data]')")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(INSTALL_HINT) from exc
    return ray


def holds_model(stage: Stage) -> bool:
    """A stage that overrides `setup` loads something worth keeping: run it in actors."""
    return type(stage).setup is not Stage.setup


def _task_rows(batch: dict[str, Any]) -> list[ShardTask]:
    from pathlib import Path

    return [ShardTask(int(i), Path(p), s, Path(o), f) for i, p, s, o, f in zip(
        batch["index"], batch["input_path"], batch["input_sha256"], batch["output_root"],
        batch["fingerprint"])]


def _status_batch(statuses: list[ShardStatus]) -> dict[str, list]:
    return {k: [getattr(s, k) for s in statuses] for k in ShardStatus.__dataclass_fields__}


class ShardActor:
    """Holds a set-up stage for the lifetime of a Ray actor."""

    def __init__(self, stage: Stage, ctx: StageContext, schema: pa.Schema):
        import os

        from duchkit.pipelines.engines import IN_WORKER

        os.environ[IN_WORKER] = "1"  # the engine parallelises; stages keep to one process
        stage.setup(ctx)
        self.stage, self.ctx, self.schema = stage, ctx, schema

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        return _status_batch([run_shard(self.stage, self.ctx, self.schema, t)
                              for t in _task_rows(batch)])


def run_shard_batch(batch: dict[str, Any], stage: Stage, ctx: StageContext,
                    schema: pa.Schema) -> dict[str, list]:
    return _status_batch([run_shard(stage, ctx, schema, t) for t in _task_rows(batch)])


class RayEngine:
    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None,
                 gpus_per_actor: float = 1.0):
        self.workers = max(1, int(workers))
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.gpus_per_actor = gpus_per_actor

    def _init(self):
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          configure_logging=False)
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.workers, **kwargs)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
        return ray

    def map(self, stage: Stage, ctx: StageContext, schema: pa.Schema,
            tasks: list[ShardTask]) -> Iterator[ShardStatus]:
        if not tasks:
            return
        ray = self._init()
        items = [{"index": t.index, "input_path": str(t.input_path),
                  "input_sha256": t.input_sha256, "output_root": str(t.output_root),
                  "fingerprint": t.fingerprint} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        if holds_model(stage):
            gpus = self.gpus_per_actor if ctx.device == "cuda" else 0
            ds = ds.map_batches(ShardActor, fn_constructor_args=(stage, ctx, schema),
                                batch_size=1, concurrency=min(self.workers, len(tasks)),
                                num_gpus=gpus, num_cpus=1)
        else:
            ds = ds.map_batches(run_shard_batch, fn_args=(stage, ctx, schema), batch_size=1,
                                num_cpus=1)
        for row in ds.iter_rows():
            yield ShardStatus(**{k: row[k] for k in ShardStatus.__dataclass_fields__})
