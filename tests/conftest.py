"""Shared fixtures: where the real data lies, and the embedded demo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from duchkit.pipelines.shared_data import find_shared_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

# Fixtures whose use puts a test in a marked tier (`tox -e fast` deselects all three):
# data = the shared real archives, models = full-size models or the demo run, ray = a Ray cluster.
TIER_FIXTURES = {"shared_data": "data", "demo_run": "models", "rule_stage": "models",
                 "effnet": "models", "minilm": "models",
                 "ray_cluster": "ray"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, mark in TIER_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
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


@pytest.fixture(scope="session")
def rule_stage():
    """The rule-augment stage with its offline models loaded (spaCy, GloVe, MiniLM), once for
    every test module that augments captions."""
    from duchkit.pipelines.stage import StageContext
    from duchkit.pipelines.stages.rule_augment import RuleAugment

    stage = RuleAugment()
    stage.setup(StageContext())
    return stage


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide BERT with a word vocabulary of aerial captions, random weights: a real
    transformers model for the text paths, built in a second."""
    from duchkit.augment.tiny_bert import build_bert

    return build_bert(tmp_path_factory.mktemp("bert"),
                      "a plane planes is are parked at airport many storage tanks near road "
                      "green trees river two buildings".split())
