"""The training pairs a robust run trusted least: where to look for captions of the wrong image.

    rows = suspicious_pairs(Path("runs/gmm64"), 20)    # least trusted first
    write_suspicious(Path("runs/gmm64"), 20)           # suspicious.parquet + suspicious.html

Every robust run (`duchkit train --robust ...`) writes each training pair's final weight
(pair_weights.parquet); this joins the lowest with their captions and images, so a person can
check them by eye and clean the archive. The HTML page is self-contained (thumbnails inlined).
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from duchkit.pipelines.run_folder import PAIR_WEIGHTS, run_inputs
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.store import StageStore, atomic_write_bytes, write_table

SUSPICIOUS = "suspicious.parquet"


def suspicious_pairs(run: Path, n: int) -> list[dict]:
    """The n training pairs with the lowest weight: image_id, weight, injected_noise (when
    the run injected noise), image_path and the image's captions."""
    run = Path(run)
    if n < 1:
        raise ConfigError(f"--suspicious must be >= 1, not {n}")
    path = run / PAIR_WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{run} has no {PAIR_WEIGHTS}: only a run trained with --robust "
                          "(chnr, gmm, ptc or oracle) weighs its training pairs")
    weights = pq.read_table(path).to_pylist()
    # weights saturate (many exactly 0 under gmm): among equal weights, the pair whose image
    # and caption codes disagree most comes first (older folders have no disagreement column)
    weights.sort(key=lambda r: (r["weight"], -(r.get("disagreement") or 0.0), r["image_id"]))
    chosen = weights[:n]
    ids = {r["image_id"] for r in chosen}
    captions: dict[str, list[str]] = {i: [] for i in ids}
    paths: dict[str, str | None] = {}
    texts = StageStore(Path(run_inputs(run)["texts"]))
    if texts.is_complete():
        for shard in texts.shard_paths():
            names = pq.read_schema(shard).names
            cols = [c for c in ("image_id", "caption_id", "caption", "image_path") if c in names]
            t = pq.read_table(shard, columns=cols).to_pylist()
            for row in t:
                if row["image_id"] in ids:
                    if row.get("caption") and row["caption"] not in captions[row["image_id"]]:
                        captions[row["image_id"]].append(row["caption"])
                    paths.setdefault(row["image_id"], row.get("image_path"))
    return [{**r, "image_path": paths.get(r["image_id"]), "captions": captions[r["image_id"]]}
            for r in chosen]


def _thumbnail(path: str | None, size: int = 128) -> str:
    if not path or not Path(path).is_file():
        return ""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=85)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_suspicious(run: Path, n: int) -> tuple[Path, Path]:
    """suspicious.parquet and suspicious.html in the run folder; returns their paths."""
    run = Path(run)
    rows = suspicious_pairs(run, n)
    table = pa.table({
        "rank": pa.array(list(range(1, len(rows) + 1)), pa.int32()),
        "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
        "weight": pa.array([r["weight"] for r in rows], pa.float32()),
        "disagreement": pa.array([r.get("disagreement") for r in rows], pa.float32()),
        "injected_noise": pa.array([r["injected_noise"] for r in rows], pa.bool_()),
        "image_path": pa.array([r["image_path"] for r in rows], pa.string()),
        "captions": pa.array([r["captions"] for r in rows], pa.list_(pa.string()))})
    parquet = run / SUSPICIOUS
    write_table(parquet, table)
    cells = []
    for i, r in enumerate(rows, 1):
        thumb = _thumbnail(r["image_path"])
        img = f'<img src="{thumb}" alt="{html.escape(r["image_id"])}">' if thumb else \
            '<div class="noimg">no image</div>'
        truth = "" if r["injected_noise"] is None else (
            '<span class="bad">injected wrong caption</span>' if r["injected_noise"]
            else '<span class="ok">caption not injected</span>')
        caps = "".join(f"<li>{html.escape(c)}</li>" for c in r["captions"]) or "<li>-</li>"
        cells.append(f'<div class="pair"><div class="rank">{i}</div>{img}<div><b>'
                     f'{html.escape(r["image_id"])}</b> weight {r["weight"]:.3f}'
                     + (f' · code disagreement {r["disagreement"]:.3f}'
                        if r.get("disagreement") is not None else "") + f' {truth}'
                     f"<ul>{caps}</ul></div></div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Least trusted pairs: "
            f"{html.escape(run.name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            ".pair{display:flex;gap:1em;align-items:flex-start;border-bottom:1px solid #ddd;"
            "padding:.6em 0}.rank{width:2em;font-weight:bold}img{width:128px;height:128px;"
            "object-fit:cover}.noimg{width:128px;height:128px;background:#eee}"
            ".bad{color:#b00}.ok{color:#070}</style></head><body>"
            f"<h1>The {len(rows)} training pairs {html.escape(run.name)} trusted least</h1>"
            "<p>Lowest final pair weight first (equal weights: the largest disagreement between "
            "the image's code and its captions' codes first): check whether the captions describe "
            "the image."
            f"</p>{''.join(cells)}</body></html>")
    page_path = run / "suspicious.html"
    atomic_write_bytes(page_path, page.encode())
    return parquet, page_path
