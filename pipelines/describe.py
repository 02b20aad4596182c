"""`duchkit inspect DIR`: what a run folder or a stage folder holds, without reading shards."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from duchkit.pipelines.store import MANIFEST, SHARD_GLOB, STATUS_DIR, StageStore


def _stage_dirs(root: Path) -> list[Path]:
    if (root / MANIFEST).exists() or any(root.glob(SHARD_GLOB)):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")
                  and ((p / MANIFEST).exists() or any(p.glob(SHARD_GLOB))))


def describe(root: Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    dirs = _stage_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"{root} holds no duchkit stage output")
    lines = []
    for d in dirs:
        store = StageStore(d)
        shards = sorted(d.glob(SHARD_GLOB))
        if not store.is_complete():
            if not (d / STATUS_DIR).is_dir():  # Parquet another tool wrote, or a stray copy
                if d == root:
                    raise FileNotFoundError(f"{d} is not a duchkit stage (no {MANIFEST}, no "
                                            f"{STATUS_DIR}/): {len(shards)} Parquet file(s)")
                lines.append(f"{d.name}: not a duchkit stage ({len(shards)} Parquet file(s), no "
                             f"{MANIFEST}, no {STATUS_DIR}/)")
            else:
                lines.append(f"{d.name}: INCOMPLETE ({len(shards)} shard file(s), no readable "
                             "manifest: rerun the pipeline to resume)")
            continue
        m = store.manifest()
        rate = f", {m['rows_per_s']} rows/s" if m.get("rows_per_s") else ""
        # a folder written in one piece (the codes of a run) records no wall time
        wall = f", {m['wall_time_s']} s" if m.get("wall_time_s") is not None else ""
        lines.append(f"{d.name}: {m['kind']}, {m['rows']} rows in {len(m['shards'])} shard(s)"
                     f"{wall}{rate}, fingerprint {m['fingerprint']}")
        if m.get("parameters"):
            lines.append(f"  parameters: {json.dumps(m['parameters'], sort_keys=True)}")
        if m.get("models"):
            lines.append(f"  models: {json.dumps(m['models'], sort_keys=True)}")
        rejects = (m.get("rejects") or {}).get("rows")
        if rejects:
            lines.append(f"  rejects: {rejects} row(s) in {d / 'rejects.parquet'}: "
                         f"{m['rejects']['counts']}")
        if m["shards"]:
            schema = pq.read_schema(d / m["shards"][0]["file"])
            lines.append("  schema:")
            for f in schema:
                meta = ""
                if f.metadata:
                    meta = "  " + ", ".join(f"{k.decode()}={v.decode()}"
                                            for k, v in f.metadata.items())
                lines.append(f"    {f.name}: {f.type}{meta}")
    return "\n".join(lines)


def write_html(root: Path, path: Path | None = None, summary: str | None = None,
               runs: bool = True) -> Path:
    """One self-contained page for a run or stage folder: the summary `describe` prints, then
    the galleries of what the folder holds (pipelines/galleries.py; `runs=False`: no retrieval
    of the trained runs below it). Default: ROOT/inspect.html (ROOT itself must be a folder
    describe() accepts)."""
    from duchkit.pipelines.galleries import folder_galleries
    from duchkit.pipelines.report_html import render
    from duchkit.pipelines.store import atomic_write_bytes

    root = Path(root)
    summary = describe(root) if summary is None else summary
    sections = folder_galleries(root, runs)
    markdown = "\n".join([f"# duchkit inspect {root.name}", "",
                          f"`{root.resolve()}`", "", "## Stages", ""]
                         + [f"- `{line.strip()}`" if line.startswith(" ") else f"- {line}"
                            for line in summary.splitlines() if line.strip()
                            and not line.startswith("    ") and line.strip() != "schema:"])
    if not sections:
        markdown += "\n\nNothing to show: no caption variants, image views or hash codes here.\n"
    path = Path(path) if path is not None else root / "inspect.html"
    atomic_write_bytes(path, render(markdown, root, f"duchkit inspect {root.name}",
                                    sections).encode())
    return path
