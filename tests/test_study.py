"""The study: shared stages computed once, resume/extend computes only what is missing, and
the report has every configured cell."""
from __future__ import annotations

import html
import json
import shutil

import pytest

from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.study import BUILTIN_STUDIES, builtin_study_path, load_study
from duchkit.pipelines.study_run import run_study

GRID = """
[study]
name = "grid"
title = "tiny grid"
seeds = [0]
paper = "RSICD"

[run]
shard_rows = 300

[train]
bits = 16
epochs = 3
batch_size = 16
hidden = 64

[text.lower]
kind = "normalise-captions"
lowercase = true

[text.plain]
kind = "normalise-captions"

[image.none]
augmentation = "NoAugmentation"

[image.acc]
augmentation = "AugmentedCenterCrop"

[[cells]]
group = "Image"
label = "none + lower"
text = "lower"
image = "none"
paper = {i2t = 0.801, t2i = 0.804}

[[cells]]
group = "Image"
label = "acc + lower"
text = "lower"
image = "acc"

[[cells]]
group = "Text"
label = "acc + plain"
text = "plain"
image = "acc"

[[cells]]
group = "Text"
label = "acc + lower (again)"
text = "lower"
image = "acc"

[[cells]]
group = "Ablation"
label = "acc + lower, no quantisation"
text = "lower"
image = "acc"
ablation = "DUCH-NQ"
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = root / "grid.toml"
    cfg.write_text(GRID)
    study = load_study(cfg, overrides={"out": root / "out"})
    first = run_study(study, progress=False, say=lambda s: None)
    return root, cfg, study, first


def test_each_shared_stage_is_computed_once(grid):
    root, _, study, first = grid
    out = root / "out"
    generated = [e.name for e in study.pipeline.stages]
    # 2 text variants and 2 image variants, each with its embedding stage: 8 stages for 5 cells
    assert len(generated) == 8 and len(set(generated)) == 8
    for name in generated:
        m = json.loads((out / name / "_manifest.json").read_text())
        assert m["shards_computed"] == len(m["shards"]) and m["shards_reused"] == 0
    # the repeated cell shares its runs with its twin: 4 distinct cells trained, 1 seed each
    assert first["trained"] == 4
    assert len({c.id for c in study.cells}) == 4


def test_report_has_every_cell_and_the_paper_numbers(grid):
    root, _, study, first = grid
    report = first["report"].read_text()
    for cell in study.cells:
        assert f"| {cell.group} | {cell.label} | 16 | 1 |" in report
    assert "0.801" in report and "I→T paper (RSICD)" in report
    csv_rows = (first["report"].parent / "cells.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4
    assert (first["report"].parent / "pk_curves.png").stat().st_size > 1000
    page = (first["report"].parent / "report.html").read_text()
    for cell in study.cells:
        assert f"<td>{cell.group}</td><td>{html.escape(cell.label, quote=False)}</td>" in page
    assert "<th>I→T paper (RSICD)</th>" in page and "0.801" in page
    assert '<img alt="pk_curves" src="data:image/png;base64,' in page  # inlined, one file
    # mAP values are real numbers in [0, 1]
    for r in first["rows"]:
        assert 0 <= r["i2t_map"] <= 1 and 0 <= r["t2i_map"] <= 1


def test_rerun_resumes_and_extends_only_what_is_missing(grid):
    root, cfg, study, first = grid
    out = root / "out"
    cell = study.cells[1]
    run_dir = out / "study" / "grid" / cell.id / "seed-0"
    kept = out / "study" / "grid" / study.cells[0].id / "seed-0" / "metrics.json"
    kept_mtime = kept.stat().st_mtime_ns
    # a cell that was interrupted (its metrics never written) is the only one trained again
    shutil.rmtree(run_dir)
    again = run_study(load_study(cfg, overrides={"out": out}), progress=False,
                      say=lambda s: None)
    assert again["trained"] == 1 and kept.stat().st_mtime_ns == kept_mtime
    stages = json.loads((first["report"].parent / "study.json").read_text())["stages"]
    assert all(s["shards_computed"] == 0 for n, s in stages.items() if n != "records")
    # adding a seed trains each distinct cell once more and nothing else
    more = load_study(cfg, overrides={"out": out})
    more.seeds = [0, 1]
    extended = run_study(more, progress=False, say=lambda s: None)
    assert extended["trained"] == 4
    assert "| Image | none + lower | 16 | 2 |" in extended["report"].read_text()


def test_builtin_studies_load(tmp_path):
    for name in BUILTIN_STUDIES:
        study = load_study(builtin_study_path(name), overrides={"out": tmp_path / name})
        assert study.cells and study.seeds


def test_study_config_errors_name_the_field(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GRID.replace('image = "none"', 'image = "nothing"'))
    with pytest.raises(ConfigError, match=r"cells\[0\]: image variant 'nothing' is not declared"):
        load_study(cfg, overrides={"out": tmp_path / "o"})
    cfg.write_text(GRID.replace("[text.plain]\n", "[text.plain]\nstage = \"missing\"\n"))
    with pytest.raises(ConfigError, match="stage 'missing' is neither a stage"):
        load_study(cfg, overrides={"out": tmp_path / "o"})
