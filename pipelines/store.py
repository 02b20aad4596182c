"""The Parquet shard store: `<out>/<stage>/part-NNNNN.parquet` plus `_manifest.json`.

Every file is written under a temporary name and renamed into place once complete, so a crash
never leaves a half shard. A shard counts as done only when its status file exists and the
checksum recorded there matches the file: that is what lets a rerun resume.
Shards are plain Parquet with the schema (and field metadata) embedded, so pandas, pyarrow and
duckdb open them without duchkit.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
STATUS_DIR = "_status"
SHARD_GLOB = "part-*.parquet"


class DamagedStage(FileNotFoundError):
    """A stage folder whose manifest cannot be read; a rerun recomputes the stage."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values (parameters, input checksums, versions)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_table(path: Path, table: pa.Table) -> str:
    """Write one Parquet file atomically; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Dictionary encoding and zstd keep repeated ids/labels small; stats help duckdb filters.
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


def remove_temporaries(stage_dir: Path) -> None:
    """Temporary files are debris of a crashed run; they are never valid output."""
    if stage_dir.exists():
        for tmp in stage_dir.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardStatus:
    """Written after a shard's rename: the proof that the shard is complete."""

    index: int
    file: str
    rows: int
    sha256: str
    fingerprint: str
    input_sha256: str | None
    seconds: float


class StageStore:
    """The folder of one stage: its shards, their status files and the manifest."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def shard_path(self, index: int) -> Path:
        return self.root / shard_name(index)

    def status_path(self, index: int) -> Path:
        return self.root / STATUS_DIR / f"{shard_name(index)}.json"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATUS_DIR).mkdir(exist_ok=True)
        remove_temporaries(self.root)

    def write_shard(self, index: int, table: pa.Table, fp: str, input_sha: str | None,
                    seconds: float) -> ShardStatus:
        digest = write_table(self.shard_path(index), table)
        status = ShardStatus(index, shard_name(index), table.num_rows, digest, fp, input_sha,
                             round(seconds, 4))
        atomic_write_json(self.status_path(index), status.__dict__)
        return status

    def completed(self, index: int, fp: str, input_sha: str | None) -> ShardStatus | None:
        """The shard's status if it is complete for this fingerprint and input, else None."""
        path = self.status_path(index)
        if not path.exists():
            return None
        try:
            status = ShardStatus(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None
        shard = self.shard_path(index)
        if (status.fingerprint != fp or status.input_sha256 != input_sha or not shard.exists()
                or sha256_file(shard) != status.sha256):
            return None
        return status

    def clear(self) -> None:
        """Drop every shard, status and manifest: called when the fingerprint changed."""
        if not self.root.exists():
            return
        for p in list(self.root.glob(SHARD_GLOB)) + list((self.root / STATUS_DIR).glob("*.json")):
            p.unlink()
        self.manifest_path.unlink(missing_ok=True)

    def drop_shards_from(self, count: int) -> None:
        """Remove shards with index >= count (left over from a run with more input shards)."""
        for p in self.root.glob(SHARD_GLOB):
            if int(p.stem.split("-")[1]) >= count:
                p.unlink()
                (self.root / STATUS_DIR / f"{p.name}.json").unlink(missing_ok=True)

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            raise FileNotFoundError(f"{self.root} has no {MANIFEST}: the stage has not completed")
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
            raise DamagedStage(f"{self.manifest_path} is damaged (not a manifest duchkit "
                               "wrote); rerun the pipeline to recompute the stage")
        return manifest

    def is_complete(self) -> bool:
        """A manifest that can be read: a damaged one counts as incomplete, so a rerun repairs
        the stage instead of trusting it."""
        try:
            self.manifest()
        except FileNotFoundError:
            return False
        return True

    def damaged_shards(self, fp: str) -> list[str]:
        """The shards of a complete stage whose file is missing or no longer has the checksum
        its status recorded (for stages whose shards have no input shard: the records)."""
        return [s["file"] for i, s in enumerate(self.manifest()["shards"])
                if self.completed(i, fp, None) is None]

    def shard_paths(self) -> list[Path]:
        return [self.root / s["file"] for s in self.manifest()["shards"]]

    def iter_tables(self) -> Iterator[tuple[int, Path, pa.Table]]:
        for i, path in enumerate(self.shard_paths()):
            yield i, path, pq.read_table(path)

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        tables = [pq.read_table(p, columns=columns) for p in self.shard_paths()]
        if not tables:
            raise ValueError(f"{self.root} has no shards")
        return pa.concat_tables(tables)

    def schema(self) -> pa.Schema:
        return pq.read_schema(self.shard_paths()[0])


def write_stage_folder(root: Path, table: pa.Table, stage: str, kind: str,
                       params: dict[str, Any], shard_rows: int = 100_000) -> dict:
    """Write a whole table as a stage folder (shards + status + manifest) outside the runner:
    for outputs produced in one piece, such as hash codes, so `duchkit inspect`, pandas and
    duckdb read them like any stage."""
    from duchkit.pipelines.version import __version__

    store = StageStore(Path(root))
    store.prepare()
    store.clear()
    fp = fingerprint(kind, params, __version__)
    shards = []
    for i, offset in enumerate(range(0, max(table.num_rows, 1), shard_rows)):
        st = store.write_shard(i, table.slice(offset, shard_rows), fp, None, 0.0)
        shards.append({"file": st.file, "rows": st.rows, "sha256": st.sha256})
    manifest = {"stage": stage, "kind": kind, "duchkit_version": __version__,
                "parameters": params, "fingerprint": fp, "shards": shards,
                "rows": table.num_rows}
    atomic_write_json(store.manifest_path, manifest)
    return manifest
