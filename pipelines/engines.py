"""Engines run one stage over its shards. The runner decides *what* to compute; an engine only
decides *where*: in this process, or in a pool of worker processes.

A shard task is self-contained (input path, output folder, index, fingerprint), so the same task
runs unchanged under any engine.

Progress within a shard: a stage may call `report_rows(n)` each time it has finished n more of
its input rows (per batch). The local engine passes the counts to its `on_rows(index, n)`
callback (the runner's progress bar): directly for a shard in this process, through a queue
from a worker process. A shard whose stage never reports moves the bar once, when it is done.
"""
from __future__ import annotations

import os
import queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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


# Where report_rows sends its counts while a shard runs in this process: (shard index, sink).
_PROGRESS: list = [None]


def report_rows(n: int) -> None:
    """Called by a stage as it finishes `n` more input rows of the shard it is processing;
    does nothing when no progress is being followed (tests, Ray, a stage run by hand)."""
    current = _PROGRESS[0]
    if current is not None and n > 0:
        index, sink = current
        sink(index, int(n))


def in_blocks(texts: list[str], rows: int, block: int = 2048):
    """Yield index lists over `texts` in blocks of `block`, identical texts adjacent (so a
    stage that deduplicates within a call still meets each text about once), and report the
    shard's `rows` in proportion as each block is handed back finished: for stages that process
    a whole shard in one batched call, so their progress bar moves within the shard."""
    order = sorted(range(len(texts)), key=texts.__getitem__)
    done = 0
    for start in range(0, len(order), block):
        yield order[start:start + block]
        now = rows * min(len(order), start + block) // len(order)
        report_rows(now - done)
        done = now


def run_shard(stage: Stage, ctx: StageContext, schema: pa.Schema, task: ShardTask,
              on_rows: Callable[[int, int], None] | None = None) -> ShardStatus:
    start = time.perf_counter()
    table = pq.read_table(task.input_path)
    _PROGRESS[0] = (task.index, on_rows) if on_rows is not None else None
    try:
        out = conform(stage.process(table, ctx), schema, stage.kind)
    finally:
        _PROGRESS[0] = None
    return StageStore(task.output_root).write_shard(task.index, out, task.fingerprint,
                                                    task.input_sha256, time.perf_counter() - start)


# Worker-process state: the stage is set up once per worker, not once per shard.
_WORKER: dict = {}


IN_WORKER = "DUCHKIT_IN_WORKER"  # set in engine workers: stages then keep to one process




def _init_worker(stage: Stage, ctx: StageContext, schema: pa.Schema, counts=None) -> None:
    from duchkit.pipelines.worker_guard import die_with_parent

    die_with_parent()
    os.environ[IN_WORKER] = "1"
    stage.setup(ctx)
    _WORKER.update(stage=stage, ctx=ctx, schema=schema, counts=counts)


def _run_in_worker(task: ShardTask) -> ShardStatus:
    counts = _WORKER.get("counts")
    sink = None if counts is None else (lambda index, n: counts.put((index, n)))
    return run_shard(_WORKER["stage"], _WORKER["ctx"], _WORKER["schema"], task, sink)


class LocalEngine:
    """Shards in this process (workers=1, the default for model stages, which batch
    internally) or in a process pool (CPU-bound stages)."""

    name = "local"

    def __init__(self, workers: int = 1, on_rows: Callable[[int, int], None] | None = None):
        self.workers = max(1, int(workers))
        self.on_rows = on_rows  # (shard index, rows) as stages report them, see report_rows

    def map(self, stage: Stage, ctx: StageContext, schema: pa.Schema,
            tasks: list[ShardTask]) -> Iterator[ShardStatus]:
        if not tasks:
            return
        if self.workers == 1 or len(tasks) == 1:
            stage.setup(ctx)
            for task in tasks:
                yield run_shard(stage, ctx, schema, task, self.on_rows)
            return
        import multiprocessing

        counts = multiprocessing.get_context().SimpleQueue() if self.on_rows else None
        with ProcessPoolExecutor(min(self.workers, len(tasks)), initializer=_init_worker,
                                 initargs=(stage, ctx, schema, counts)) as pool:
            pending = {pool.submit(_run_in_worker, t) for t in tasks}
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                self._drain(counts)
                for fut in done:
                    yield fut.result()
            self._drain(counts)  # counts that arrived after their shard's result

    def _drain(self, counts) -> None:
        """Pass the row counts workers reported to on_rows."""
        while counts is not None and not counts.empty():
            try:
                index, n = counts.get()
            except (EOFError, OSError, queue.Empty):
                return
            self.on_rows(index, n)


ENGINES = ("local", "ray")


class EngineUnavailable(RuntimeError):
    """The engine asked for is not installed; the message says how to install it."""


def make_engine(name: str, workers: int = 1, address: str | None = None,
                on_rows: Callable[[int, int], None] | None = None):
    """The local engine needs nothing beyond duchkit; Ray is imported only when asked for.
    `on_rows(index, n)`: progress within shards (local engine; Ray moves per shard)."""
    if name == "local":
        return LocalEngine(workers, on_rows)
    if name == "ray":
        from duchkit.pipelines.ray_engine import RayEngine

        return RayEngine(workers=max(2, workers) if workers == 1 else workers, address=address)
    raise ValueError(f"unknown engine {name!r}; available: {ENGINES}")
