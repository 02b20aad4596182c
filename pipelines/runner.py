"""The stage runner: reads the dataset into shards, then runs each configured stage over the
previous stage's shards, skipping what is already complete.

Resume rule: output shard i of a stage is reused when its status file carries the same stage
fingerprint (kind, parameters, models, seed, stage version) and the same input-shard checksum,
and the shard on disk still has the recorded checksum. Anything else is recomputed, so a changed
parameter recomputes the stage, and a changed input recomputes exactly the shards it reaches.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from duchkit.pipelines.config import SOURCE_STAGE, PipelineConfig, StageEntry
from duchkit.pipelines.engines import ShardTask, make_engine
from duchkit.pipelines.folder_lock import LOCK_FILE, folder_lock
from duchkit.pipelines.readers import (DatasetError, DatasetSpec, describe_problems, problems_table,
                                       read_dataset)
from duchkit.pipelines.schema import RECORD_SCHEMA, with_stage_metadata
from duchkit.pipelines.stage import ConfigError, StageContext
from duchkit.pipelines.store import (StageStore, atomic_write_json, fingerprint, sha256_file,
                                     write_table)
from duchkit.pipelines.version import __version__

log = logging.getLogger("duchkit")


class DeviceUnavailable(ConfigError, RuntimeError):
    """The device asked for is not on this machine: a one-line error (exit code 2), no
    traceback. Still a RuntimeError, as resolve_device raised before."""


def resolve_device(device: str) -> str:
    if device in ("cpu", "cuda"):
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise DeviceUnavailable("--device cuda was asked for, but torch sees no CUDA "
                                        "device")
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def setup_logging(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "duchkit.log"
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve()
               for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    return path


@dataclass
class StagePlan:
    name: str
    status: str  # "complete", "resume", "new", "recompute"
    shards_done: int
    shards_total: int

    def describe(self) -> str:
        return f"{self.name:<24} {self.status:<10} {self.shards_done}/{self.shards_total} shards done"


# ---------------------------------------------------------------- the source stage (reader)

def dataset_fingerprint(spec: DatasetSpec) -> str:
    files = {str(p): sha256_file(p) for p in spec.source_files()}
    images: list[Any] = []
    if spec.images is not None:
        # Names and sizes: cheap, and they change whenever an image is replaced or renamed.
        images = sorted((str(p.relative_to(spec.images)), p.stat().st_size)
                        for p in spec.images.rglob("*") if p.is_file())
    params = {k: str(v) for k, v in vars(spec).items()}
    return fingerprint("records", params, files, images)


def ingest(spec: DatasetSpec, out: Path, shard_rows: int, lenient: bool,
           force: bool = False) -> dict[str, Any]:
    """Read + validate the dataset and write `<out>/records`. Validation runs before any
    output is written: in strict mode a bad dataset leaves nothing behind."""
    store = StageStore(out / SOURCE_STAGE)
    fp = fingerprint(dataset_fingerprint(spec), shard_rows, lenient)
    if not force and store.is_complete() and store.manifest().get("fingerprint") == fp:
        damaged = store.damaged_shards(fp)
        if not damaged:
            return store.manifest()
        log.warning("records: %s missing or changed on disk; reading the dataset again",
                    ", ".join(damaged))
    start = time.perf_counter()
    result = read_dataset(spec)
    if result.problems and not lenient:
        raise DatasetError(describe_problems(result.problems))
    if result.records.num_rows == 0:
        raise DatasetError(f"{spec.captions}: no usable (image, caption) records")
    store.prepare()
    store.clear()
    rejects = None
    if result.problems:
        rejects = write_table(store.root / "rejects.parquet", problems_table(result.problems))
        log.warning("records: %d problem(s) written to %s", len(result.problems),
                    store.root / "rejects.parquet")
    else:
        (store.root / "rejects.parquet").unlink(missing_ok=True)
    schema = with_stage_metadata(RECORD_SCHEMA, SOURCE_STAGE,
                                 {k: str(v) for k, v in vars(spec).items()}, {})
    table = result.records.cast(schema)
    shards = []
    for i, offset in enumerate(range(0, table.num_rows, shard_rows)):
        st = store.write_shard(i, table.slice(offset, shard_rows), fp, None, 0.0)
        shards.append({"file": st.file, "rows": st.rows, "sha256": st.sha256})
    wall = time.perf_counter() - start
    manifest = {
        "stage": SOURCE_STAGE, "kind": "read-dataset", "duchkit_version": __version__,
        "parameters": {k: str(v) for k, v in vars(spec).items()}, "models": {},
        "seed": None, "input_fingerprint": dataset_fingerprint(spec), "fingerprint": fp,
        "shards": shards, "rows": table.num_rows,
        "rejects": {"rows": len(result.problems), "sha256": rejects,
                    "counts": dict(result.problem_counts())},
        "wall_time_s": round(wall, 3), "rows_per_s": round(table.num_rows / max(wall, 1e-9), 1),
    }
    atomic_write_json(store.manifest_path, manifest)
    return manifest


# ---------------------------------------------------------------- map stages

def stage_fingerprint(entry: StageEntry, seed: int, input_shards: list[dict] | None = None
                      ) -> str:
    """What a stage's output depends on besides its input shard: kind, version, parameters,
    models and seed. The input is fingerprinted per shard (its checksum, in each status file),
    so an edited caption recomputes the shards it reaches and no others. A `whole_input` stage
    depends on every input shard (`input_shards`, the input manifest's): all their checksums
    are part of its fingerprint."""
    st = entry.stage
    parts = [st.kind, getattr(st, "version", 1), st.params(), st.models(), seed]
    if st.whole_input and input_shards is not None:
        parts.append([s["sha256"] for s in input_shards])
    return fingerprint(*parts)


def _tasks(entry: StageEntry, input_store: StageStore, store: StageStore, fp: str
           ) -> tuple[list[ShardTask], list[dict]]:
    """Split the input shards into those still to compute and those already done."""
    todo, done = [], []
    for i, shard in enumerate(input_store.manifest()["shards"]):
        status = store.completed(i, fp, shard["sha256"])
        if status is not None:
            done.append(status.__dict__)
        else:
            todo.append(ShardTask(i, input_store.root / shard["file"], shard["sha256"],
                                  store.root, fp))
    return todo, done


def plan_stage(entry: StageEntry, out: Path, seed: int) -> StagePlan:
    input_store, store = StageStore(out / entry.input), StageStore(out / entry.name)
    if not input_store.is_complete():
        return StagePlan(entry.name, "new", 0, 0)
    in_manifest = input_store.manifest()
    fp = stage_fingerprint(entry, seed, in_manifest["shards"])
    todo, done = _tasks(entry, input_store, store, fp)
    total = len(in_manifest["shards"])
    if store.is_complete() and not todo and store.manifest().get("fingerprint") == fp:
        return StagePlan(entry.name, "complete", total, total)
    if done:
        return StagePlan(entry.name, "resume", len(done), total)
    return StagePlan(entry.name, "recompute" if store.root.exists() else "new", 0, total)


def run_stage(entry: StageEntry, out: Path, ctx: StageContext, workers: int = 1,
              engine: str = "local", progress: bool = True,
              ray_address: str | None = None) -> dict[str, Any]:
    input_store, store = StageStore(out / entry.input), StageStore(out / entry.name)
    in_manifest = input_store.manifest()
    input_schema = input_store.schema()
    entry.stage.check_input(input_schema, f"stage '{entry.input}'")
    fp = stage_fingerprint(entry, ctx.seed, in_manifest["shards"])
    schema = with_stage_metadata(entry.stage.output_schema(input_schema), entry.name,
                                 entry.stage.params(), entry.stage.models())
    store.prepare()
    if store.is_complete() and store.manifest().get("fingerprint") != fp:
        log.info("%s: parameters, models or seed changed, recomputing", entry.name)
        store.clear()
    store.manifest_path.unlink(missing_ok=True)  # incomplete until this run finishes
    store.drop_shards_from(len(in_manifest["shards"]))
    todo, done = _tasks(entry, input_store, store, fp)
    rows_in = {i: s["rows"] for i, s in enumerate(in_manifest["shards"])}
    log.info("%s: %d shard(s) to compute, %d already complete", entry.name, len(todo), len(done))
    ctx = StageContext(ctx.seed, ctx.device, out / "_cache", store.root, ctx.log)
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if todo and entry.stage.whole_input:
        entry.stage.plan([input_store.root / s["file"] for s in in_manifest["shards"]], ctx)
    statuses = list(done)
    # rows/s and ETA over the rows still to compute; stages that call engines.report_rows per
    # batch move the bar within a shard, the others once per shard
    bar = tqdm(total=sum(rows_in[t.index] for t in todo), desc=entry.name, unit="row",
               disable=not progress or not todo, dynamic_ncols=True, smoothing=0.1,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} rows "
                          "[{elapsed}<{remaining}, {rate_fmt}]")
    reported: dict[int, int] = {}

    def on_rows(index: int, n: int) -> None:  # never past the shard's own row count
        n = min(n, rows_in[index] - reported.get(index, 0))
        if n > 0:
            reported[index] = reported.get(index, 0) + n
            bar.update(n)

    with bar:
        for status in make_engine(engine, workers, ray_address, on_rows if progress else None
                                  ).map(entry.stage, ctx, schema, todo):
            statuses.append(status.__dict__)
            bar.update(rows_in[status.index] - reported.get(status.index, 0))
            reported[status.index] = rows_in[status.index]
    wall = time.perf_counter() - start
    statuses.sort(key=lambda s: s["index"])
    computed_rows = sum(rows_in[t.index] for t in todo)
    manifest = {
        "stage": entry.name, "kind": entry.stage.kind, "duchkit_version": __version__,
        "parameters": entry.stage.params(), "models": entry.stage.models(), "seed": ctx.seed,
        "device": ctx.device, "engine": engine, "input": entry.input,
        "input_fingerprint": in_manifest["fingerprint"], "fingerprint": fp,
        "shards": [{"file": s["file"], "rows": s["rows"], "sha256": s["sha256"],
                    "input_sha256": s["input_sha256"]} for s in statuses],
        "rows": sum(s["rows"] for s in statuses),
        "shards_computed": len(todo), "shards_reused": len(done),
        "wall_time_s": round(wall, 3),
        "rows_per_s": round(computed_rows / wall, 1) if todo and wall > 0 else None,
    }
    summary = entry.stage.summarise([store.root / s["file"] for s in statuses])
    if summary:
        manifest["summary"] = summary
    atomic_write_json(store.manifest_path, manifest)
    log.info("%s: done, %d rows, %.2f s", entry.name, manifest["rows"], wall)
    return manifest


def run_pipeline(config: PipelineConfig, dry_run: bool = False, progress: bool = True
                 ) -> list[StagePlan] | dict[str, dict]:
    out = config.run.out
    if dry_run:
        records = StageStore(out / SOURCE_STAGE)
        plans = [StagePlan(SOURCE_STAGE, "complete" if records.is_complete() else "new", 0, 0)]
        return plans + [plan_stage(e, out, config.run.seed) for e in config.stages]
    device = resolve_device(config.run.device)  # before anything is written
    new_folder = not Path(out).exists()
    with folder_lock(out, "duchkit run"):
        setup_logging(out)
        log.info("duchkit %s: run into %s", __version__, out)
        try:
            manifests = {SOURCE_STAGE: ingest(config.dataset, out, config.run.shard_rows,
                                              config.run.lenient)}
        except DatasetError:
            if new_folder:  # a strict validation failure leaves nothing behind
                remove_new_folder(out)
            raise
        ctx = StageContext(seed=config.run.seed, device=device, log=log)
        for entry in config.stages:
            manifests[entry.name] = run_stage(entry, out, ctx, config.run.workers,
                                              config.run.engine, progress,
                                              config.run.ray_address)
    return manifests


def remove_new_folder(out: Path) -> None:
    """Undo what a run wrote into a folder it created (its log and lock file), then the folder
    itself if nothing else is there."""
    path = (Path(out) / "duchkit.log").resolve()
    for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)
              and Path(h.baseFilename) == path]:
        log.removeHandler(h)
        h.close()
    path.unlink(missing_ok=True)
    (Path(out) / LOCK_FILE).unlink(missing_ok=True)
    try:
        Path(out).rmdir()
    except OSError:
        pass


def read_stage(out: Path, name: str) -> pa.Table:
    """All rows of a completed stage, for library users and tests."""
    return StageStore(Path(out) / name).read_all()


def stages_in_folder(out: Path, names: set[str]) -> list[StageEntry]:
    """Stages an earlier single-stage command wrote into `out` that `names` does not hold,
    rebuilt from their manifests (so they are reused, not recomputed)."""
    import json

    from duchkit.pipelines.stages import stage_class

    entries = []
    for manifest in sorted(Path(out).glob("*/_manifest.json")):
        data = json.loads(manifest.read_text())
        name, kind = data.get("stage"), data.get("kind")
        if not name or name in names or kind in (None, "read-dataset") or "input" not in data:
            continue
        where = f"{manifest}"
        stage = stage_class(kind, where).from_config(data.get("parameters") or {}, where)
        entries.append(StageEntry(name, stage, data["input"]))
    return entries


def run_single_stage(config: PipelineConfig, kind: str, name: str, values: dict,
                     input_name: str | None = None, where: str = "duchkit",
                     reuse_folder: bool = False, progress: bool = True) -> dict:
    """Run one stage (and whatever its input needs) on the dataset of `config`; the stage lands
    in `<out>/<name>` exactly as it would inside a whole pipeline run. With `reuse_folder`, the
    input may also be a stage an earlier single-stage run wrote into the output folder.
    Returns the stage's manifest."""
    from duchkit.pipelines.stages import stage_class

    stage = stage_class(kind, where).from_config(values, where)
    input_name = input_name or SOURCE_STAGE
    needed, wanted = [], input_name
    by_name = {e.name: e for e in config.stages}
    if reuse_folder and input_name not in by_name:
        by_name.update({e.name: e for e in stages_in_folder(config.run.out,
                                                            set(by_name) | {name})})
    while wanted in by_name:  # the chain of configured stages that produce the input
        needed.insert(0, by_name[wanted])
        wanted = by_name[wanted].input
    if wanted != SOURCE_STAGE:
        raise ConfigError(f"{where}: --input {input_name!r} is not a stage of the config")
    config.stages = [e for e in needed if e.name != name] + [StageEntry(name, stage, input_name)]
    return run_pipeline(config, progress=progress)[name]
