"""Write a whole table as a stage folder (shards + status + manifest) outside the runner: for
outputs such as hash codes that are produced in one piece, so `duchkit inspect`, pandas and
duckdb read them like any stage."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from duchkit.pipelines.store import StageStore, atomic_write_json, fingerprint
from duchkit.pipelines.version import __version__


def write_stage_folder(root: Path, table: pa.Table, stage: str, kind: str,
                       params: dict[str, Any], shard_rows: int = 100_000) -> dict:
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
