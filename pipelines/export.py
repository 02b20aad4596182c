"""`duchkit export`: a text stage's output back in the layouts people use.

- captions-json: the source layout (UCM-captions/RSICD/Sydney-captions), each sentence carrying
  its variants under `augmented.<stage name>`, plus a top-level `duchkit` block with the method
  parameters, model ids and versions;
- jsonl / csv: one row per variant (csv gets the metadata block as `#` comment lines).

A text stage is one whose rows carry `augmented` (augmentation stages) or `text` (normalisation).
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from duchkit.pipelines.config import SOURCE_STAGE
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.store import MANIFEST, StageStore, atomic_write_bytes
from duchkit.pipelines.version import __version__

FORMATS = ("captions-json", "jsonl", "csv")
SUFFIX = {"captions-json": ".json", "jsonl": ".jsonl", "csv": ".csv"}


def text_column(schema: pa.Schema) -> str | None:
    if any(pa.types.is_fixed_size_list(f.type) for f in schema):
        return None  # an embedding stage: it carries its input's text, it makes none
    for name in ("augmented", "text"):
        if name in schema.names:
            return name
    return None


def text_stages(root: Path) -> list[str]:
    names = []
    for d in sorted(p for p in Path(root).iterdir() if (p / MANIFEST).exists()):
        store = StageStore(d)
        if d.name != SOURCE_STAGE and store.manifest()["shards"] and text_column(store.schema()):
            names.append(d.name)
    return names


def _metadata(root: Path, stages: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"version": __version__, "stages": {}}
    for name in stages:
        m = StageStore(root / name).manifest()
        meta["stages"][name] = {k: m.get(k) for k in ("kind", "parameters", "models", "seed",
                                                     "fingerprint", "rows")}
    return meta


def _rows(root: Path, stage: str) -> list[dict[str, Any]]:
    table = StageStore(root / stage).read_all()
    col = text_column(table.schema)
    keep = [c for c in ("dataset", "image_id", "caption_id", "caption_index", "label", "split",
                        "caption", "method", "variant_index", "changed") if c in table.column_names]
    rows = table.select(keep + [col]).to_pylist()
    for r in rows:
        r["stage"] = stage
        r["variant"] = r.pop(col)
        r.setdefault("variant_index", 0)
    return rows


def export(root: Path, fmt: str, stages: list[str] | None = None,
           output: Path | None = None) -> Path:
    root = Path(root)
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, not {fmt!r}")
    if not (root / SOURCE_STAGE / MANIFEST).exists():
        raise FileNotFoundError(f"{root} is not a completed duchkit run folder "
                                f"(no {SOURCE_STAGE}/{MANIFEST})")
    available = text_stages(root)
    stages = stages or available
    unknown = [s for s in stages if s not in available]
    if unknown:
        raise ConfigError(f"--stage {unknown}: not completed text stages of {root} "
                          f"(available: {available})")
    if not stages:
        raise ConfigError(f"{root} has no completed text stage to export")
    meta = _metadata(root, stages)
    rows = [r for s in stages for r in _rows(root, s)]
    output = Path(output) if output else root / "export" / f"captions{SUFFIX[fmt]}"
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "captions-json":
        data = _captions_json(root, rows, meta)
        blob = json.dumps(data, indent=1, ensure_ascii=False).encode()
    elif fmt == "jsonl":
        lines = [json.dumps({"duchkit": meta}, ensure_ascii=False)]
        lines += [json.dumps(r, ensure_ascii=False) for r in rows]
        blob = ("\n".join(lines) + "\n").encode()
    else:
        buf = io.StringIO()
        for line in json.dumps({"duchkit": meta}, indent=1).splitlines():
            buf.write(f"# {line}\n")
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        blob = buf.getvalue().encode()
    atomic_write_bytes(output, blob)
    return output


def _captions_json(root: Path, rows: list[dict], meta: dict) -> dict[str, Any]:
    """Rebuild the source layout from the records stage, then attach the variants."""
    records = StageStore(root / SOURCE_STAGE).read_all().to_pylist()
    variants: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(rows, key=lambda r: (r["caption_id"], r["stage"], r["variant_index"])):
        variants[r["caption_id"]][r["stage"]].append(r["variant"])
    images: dict[str, dict[str, Any]] = {}
    classes: dict[str, int] = {}
    sentid = 0
    for rec in records:
        img = images.get(rec["image_id"])
        if img is None:
            label = rec["label"]
            if label is not None and label not in classes:
                classes[label] = len(classes)
            img = images[rec["image_id"]] = {
                "filename": rec["image_id"], "imgid": len(images), "split": rec["split"],
                "classname": label, "classcode": classes.get(label), "sentences": [],
                "sentids": []}
        img["sentences"].append({"raw": rec["caption"], "sentid": sentid, "imgid": img["imgid"],
                                 "augmented": dict(variants.get(rec["caption_id"], {}))})
        img["sentids"].append(sentid)
        sentid += 1
    return {"dataset": records[0]["dataset"] if records else None,
            "classes": {str(v): k for k, v in classes.items()}, "num_classes": len(classes),
            "images": list(images.values()), "duchkit": meta}
