"""Shared fixtures: where the real data lies, and the embedded demo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from duchkit.pipelines.shared_data import find_shared_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pipelines" / "demo"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return find_shared_data(REPO)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """`duchkit run` on the embedded demo, once per session (~25-60 s on a CPU): records, text
    variants, image views and the real EfficientNet-Lite0 / MiniLM embeddings
    (`image_embeddings`, `caption_embeddings`). Tests only read it (a re-run reuses shards)."""
    from duchkit.pipelines.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    return out
