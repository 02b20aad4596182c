"""Shared fixtures: where the real data lies, and the embedded demo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pipelines" / "demo"


def find_shared_data() -> Path:
    """The real data folder: $DUCHKIT_SHARED_DATA, else `shared/data` beside some parent of the
    repository (the layout of the workplace and of CI's clone)."""
    env = os.environ.get("DUCHKIT_SHARED_DATA")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if (candidate / "ucm" / "captions.json").is_file():
            return candidate
    raise RuntimeError("real data not found: set DUCHKIT_SHARED_DATA to the shared/data folder")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return find_shared_data()


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """`duchkit run` on the embedded demo, once per session (~25-60 s on a CPU): records, text
    variants, image views and the real EfficientNet-Lite0 / MiniLM embeddings
    (`image_embeddings`, `caption_embeddings`). Tests only read it (a re-run reuses shards)."""
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    return out
