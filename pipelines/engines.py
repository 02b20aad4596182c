"""Engines run one stage over its shards. The runner decides *what* to compute; an engine only
decides *where*: in this process, or in a pool of worker processes.

A shard task is self-contained (input path, output folder, index, fingerprint), so the same task
runs unchanged under any engine.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from duchkit.pipelines.stage import Stage, StageContext
from duchkit.pipelines.store import ShardStatus, StageStore


@dataclass(frozen=True)
class ShardTask:
    index: int
    input_path: Path
    input_sha256: str
    output_root: Path
    fingerprint: str


def conform(table: pa.Table, schema: pa.Schema, stage: str) -> pa.Table:
    """Return the table in exactly the declared schema (order, types, metadata)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise RuntimeError(f"stage {stage!r} returned no column(s) {missing}")
    table = table.select(schema.names)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise RuntimeError(f"stage {stage!r} returned columns that do not match its declared "
                           f"schema: {exc}") from exc


def run_shard(stage: Stage, ctx: StageContext, schema: pa.Schema, task: ShardTask) -> ShardStatus:
    start = time.perf_counter()
    table = pq.read_table(task.input_path)
    out = conform(stage.process(table, ctx), schema, stage.kind)
    return StageStore(task.output_root).write_shard(task.index, out, task.fingerprint,
                                                    task.input_sha256, time.perf_counter() - start)


# Worker-process state: the stage is set up once per worker, not once per shard.
_WORKER: dict = {}


IN_WORKER = "DUCHKIT_IN_WORKER"  # set in engine workers: stages then keep to one process




def _init_worker(stage: Stage, ctx: StageContext, schema: pa.Schema) -> None:
    from duchkit.pipelines.worker_guard import die_with_parent

    die_with_parent()
    os.environ[IN_WORKER] = "1"
    stage.setup(ctx)
    _WORKER.update(stage=stage, ctx=ctx, schema=schema)


def _run_in_worker(task: ShardTask) -> ShardStatus:
    return run_shard(_WORKER["stage"], _WORKER["ctx"], _WORKER["schema"], task)


class LocalEngine:
    """Shards in this process (workers=1, the default for model stages, which batch
    internally) or in a process pool (CPU-bound stages)."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def map(self, stage: Stage, ctx: StageContext, schema: pa.Schema,
            tasks: list[ShardTask]) -> Iterator[ShardStatus]:
        if not tasks:
            return
        if self.workers == 1 or len(tasks) == 1:
            stage.setup(ctx)
            for task in tasks:
                yield run_shard(stage, ctx, schema, task)
            return
        with ProcessPoolExecutor(min(self.workers, len(tasks)), initializer=_init_worker,
                                 initargs=(stage, ctx, schema)) as pool:
            futures = [pool.submit(_run_in_worker, t) for t in tasks]
            for fut in as_completed(futures):
                yield fut.result()


ENGINES = ("local", "ray")


class EngineUnavailable(RuntimeError):
    """The engine asked for is not installed; the message says how to install it."""


def make_engine(name: str, workers: int = 1, address: str | None = None):
    """The local engine needs nothing beyond duchkit; Ray is imported only when asked for."""
    if name == "local":
        return LocalEngine(workers)
    if name == "ray":
        from duchkit.pipelines.ray_engine import RayEngine

        return RayEngine(workers=max(2, workers) if workers == 1 else workers, address=address)
    raise ValueError(f"unknown engine {name!r}; available: {ENGINES}")
