"""The demo shows something true: `duchkit run` ends with a study on 420 embedded UCM images
whose comparison is precise enough to read (paired differences with std < .03 over its seeds),
and a page of captions, back-translations and image views. Uses the session's demo run."""
from __future__ import annotations

import json

from duchkit.pipelines.study import builtin_study_path, load_study
from duchkit.pipelines.study_plots import pk_mean


def test_the_demo_study_is_precise_enough_to_read(demo_run):
    folder = demo_run / "demo-study" / "study" / "demo"
    data = json.loads((folder / "study.json").read_text())
    assert len(data["seeds"]) >= 5 and not data["failed"]
    rows = (folder / "cells.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(data["seeds"])
    (diff,) = data["differences"]
    for task in ("i2t", "t2i"):
        d = diff[task]
        assert d["seeds"] == len(data["seeds"])
        assert d["std"] < 0.03, (task, d)  # the seeds agree on the difference
        assert d["high"] - d["low"] < 0.08  # so its 95% interval is narrow enough to act on
    report = (folder / "report.md").read_text()
    assert "| Image | AugmentedCenterCrop | 32 | 5 |" in report and "[" in report


def test_the_demo_plots_p_at_k_only_up_to_the_database(demo_run):
    study = load_study(builtin_study_path("demo"), overrides={"out": demo_run / "demo-study"})
    cell = study.cells[0]
    metrics = json.loads((demo_run / "demo-study" / "study" / "demo" / cell.id / "seed-0" /
                          "metrics.json").read_text())["results"]
    for task in ("i2t", "t2i"):
        ks, _ = pk_mean(study, cell.id, task)
        assert max(ks) == min(200, metrics[task]["database"] // 5 * 5)
    assert max(pk_mean(study, cell.id, "t2i")[0]) == 165  # 168 retrieval images, not K = 200


def test_the_demo_writes_a_page_of_its_captions_and_views(demo_run):
    page = (demo_run / "inspect.html").read_text()
    assert "<h2>Captions and their variants</h2>" in page and "en → pt → en" in page
    assert "<h2>Image views</h2>" in page and "data:image/jpeg;base64," in page
    assert "<h2>Retrieval" not in page  # those are in the study's report
