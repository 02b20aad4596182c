"""What every benchmark shares: where its result file goes, and where the real data lies.

A benchmark's last stdout line is its JSON object; `write_result` writes the same object to
`benchmarks/results/<filename>` (the benchmark contract in ARCHITECTURE.md)."""
from __future__ import annotations

import json
from pathlib import Path

from duchkit.pipelines.shared_data import SharedDataNotFound, find_shared_data

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"


def write_result(result: dict, filename: str) -> Path:
    out = RESULTS / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def shared_data() -> Path:
    """The real archives: $DUCHKIT_SHARED_DATA, else shared/data beside a parent of this folder."""
    try:
        return find_shared_data(HERE)
    except SharedDataNotFound as exc:
        raise SystemExit(str(exc)) from None


def parse_settings(items: list[str]) -> dict:
    """`--set KEY=VALUE` arguments as TrainConfig values: JSON where the value parses (100, true,
    1e-3, "sum"), the text itself otherwise."""
    values: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values
