"""`duchkit study --protocol duchkit|paper`: the paper protocol's training settings per cell, its
own run folders, the report header, and the paper column only beside cells of the paper
figures' archive. Nothing is trained here: the studies are loaded, dry-run or reported on
hand-written results."""
from __future__ import annotations

import json

import pytest

from duchkit.pipelines.cli import main
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.study import (DEFAULT_PROTOCOL, builtin_study_path, load_study,
                                     paper_shown, prepare_study)
from duchkit.pipelines.study_report import write_report
from duchkit.pipelines.study_run import cell_train_config, collect

STUDY = """
[study]
name = "proto"
title = "protocol grid"
seeds = [0]
paper = "UCM"

[train]
bits = 16
epochs = 2
batch_size = 16
hidden = 64

[text.plain]
kind = "normalise-captions"

[image.none]
augmentation = "NoAugmentation"

[[cells]]
group = "B=16"
label = "DUCH 16"
text = "plain"
image = "none"
paper = {i2t = 0.76, t2i = 0.799}

[[cells]]
group = "B=16"
label = "DJSRH 16"
text = "plain"
image = "none"
train = {method = "djsrh"}
paper = {i2t = 0.5, t2i = 0.5}
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "proto.toml"
    path.write_text(STUDY)
    return path


def test_default_protocol_leaves_cells_alone(cfg, tmp_path):
    study = load_study(cfg, overrides={"out": tmp_path / "o"})
    assert study.protocol == DEFAULT_PROTOCOL == "duchkit" and study.name == "proto"
    for cell in study.cells:
        assert "captions_per_image" not in cell.train and "weights_ref_bits" not in cell.train
    # naming the default changes nothing: the same cell ids, so finished runs are reused
    same = load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="duchkit")
    assert [c.id for c in same.cells] == [c.id for c in study.cells]


def test_paper_protocol_trains_as_the_figures_were_made(cfg, tmp_path):
    default = load_study(cfg, overrides={"out": tmp_path / "o"})
    paper = load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="paper")
    assert paper.protocol == "paper" and paper.name == "proto-paper"  # its own folder
    duch, djsrh = paper.cells
    cfg_duch = cell_train_config(duch, 0, "cpu")
    assert cfg_duch.captions_per_image == 1 and cfg_duch.weights_ref_bits == 0
    w16 = cfg_duch.weights()  # constant beta/gamma: the paper's values at 16 bits too
    assert (w16.beta, w16.gamma) == (cfg_duch.beta, cfg_duch.gamma)
    # a baseline has no beta/gamma (and refuses the setting): one caption per image only
    cfg_djsrh = cell_train_config(djsrh, 0, "cpu")
    assert cfg_djsrh.method == "djsrh" and cfg_djsrh.captions_per_image == 1
    # never a default-protocol run folder: other ids, another study folder
    assert not {c.id for c in paper.cells} & {c.id for c in default.cells}
    # the file's [study] protocol does the same; --protocol overrides it
    cfg.write_text(STUDY.replace('paper = "UCM"\n', 'paper = "UCM"\nprotocol = "paper"\n'))
    from_file = load_study(cfg, overrides={"out": tmp_path / "o"})
    assert [c.id for c in from_file.cells] == [c.id for c in paper.cells]
    overridden = load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="duchkit")
    assert [c.id for c in overridden.cells] == [c.id for c in default.cells]


def test_protocol_errors(cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"--protocol: protocol = 'papers': one of duchkit, "
                                          "paper"):
        load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="papers")
    cfg.write_text(STUDY.replace('paper = "UCM"\n', 'paper = "UCM"\nprotocol = 1\n'))
    with pytest.raises(ConfigError, match=r"\[study\]: protocol = 1"):
        load_study(cfg, overrides={"out": tmp_path / "o"})
    # a cell that sets what the protocol fixes is refused, not silently changed
    cfg.write_text(STUDY.replace("hidden = 64", "hidden = 64\nweights_ref_bits = 64"))
    with pytest.raises(ConfigError, match=r"weights_ref_bits = 64 under protocol 'paper'"):
        load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="paper")
    load_study(cfg, overrides={"out": tmp_path / "o"})  # fine under duchkit's


def test_cli_protocol(cfg, tmp_path, capsys):
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as exc:
        main(["study", "--config", str(cfg), "--out", out, "--protocol", "bogus", "--dry-run"])
    assert exc.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    cfg.write_text(STUDY.replace('paper = "UCM"\n', 'paper = "UCM"\nprotocol = "bogus"\n'))
    assert main(["study", "--config", str(cfg), "--out", out, "--dry-run"]) == 2
    assert "protocol = 'bogus'" in capsys.readouterr().err
    # the command line overrides the file
    assert main(["study", "--config", str(cfg), "--out", out, "--dry-run",
                 "--protocol", "paper"]) == 0
    text = capsys.readouterr().out
    assert "study proto-paper:" in text and "protocol paper: as the paper's figures" in text


def _report(study, rows=()):
    return write_report(study, list(rows), {"stages_seconds": 0, "train_eval_seconds": 0,
                                            "runs_trained": 0, "manifests": {}}).read_text()


def test_report_states_protocol_and_shows_paper_figures_only_for_their_archive(cfg, tmp_path):
    study = load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="paper")
    assert study.pipeline.dataset.name == "ucm-demo" and paper_shown(study)
    report = _report(study)
    assert "Protocol: paper, as the paper's figures were made: one seeded caption" in report
    assert "| I→T paper (UCM) | T→I paper (UCM) |" in report and "0.760 | 0.799 |" in report
    page = (tmp_path / "o" / "study" / "proto-paper" / "report.html").read_text()
    assert "Protocol: paper" in page and "<th>I→T paper (UCM)</th>" in page
    assert json.loads((tmp_path / "o" / "study" / "proto-paper" / "study.json").read_text()
                      )["protocol"] == "paper"
    # another archive: no UCM figure beside its cells, and the column says why
    study.pipeline.dataset.name = "rsitmd"
    assert not paper_shown(study)
    report = _report(study)
    assert "0.760" not in report and "I→T paper" not in report
    assert "| paper: UCM; this study: rsitmd |" in report and "| not shown |" in report
    assert "Paper figures not shown: they are UCM's and this study runs on rsitmd" in report
    default = load_study(cfg, overrides={"out": tmp_path / "o"})
    assert "Protocol: duchkit, duchkit's defaults" in _report(default)


@pytest.mark.parametrize("name, paper, shown", [
    ("ucm", "UCM", True), ("UCM_captions", "UCM", True), ("uc-merced", "UCM", True),
    ("ucm", "UCM, CHNR's curves", True), ("rsicd", "UCM", False), ("rsitmd", "RSICD", False),
    ("RSICD_optimal", "RSICD", True), ("mucm", "UCM", False)])
def test_paper_dataset_matching(cfg, tmp_path, name, paper, shown):
    study = load_study(cfg, overrides={"out": tmp_path / "o"})
    study.pipeline.dataset.name, study.paper_archive = name, paper
    assert paper_shown(study) is shown


def test_paper_protocol_reads_one_caption_metrics(cfg, tmp_path):
    study = load_study(cfg, overrides={"out": tmp_path / "o"}, protocol="paper")
    result = {"map": 0.5, "k": 20}
    for cell, captions in zip(study.cells, ("one per image (paper protocol)", "all"),
                              strict=True):
        run = tmp_path / "o" / "study" / study.name / cell.id / "seed-0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({
            "captions": captions, "results": {t: result for t in ("i2t", "t2i", "i2i", "t2t")}}))
    with pytest.raises(ConfigError, match="not one per image as protocol 'paper' is"):
        collect(study)
    study.cells = study.cells[:1]
    assert [r["i2t_map"] for r in collect(study)] == [0.5]


def test_builtin_studies_load_under_the_paper_protocol(tmp_path):
    study = prepare_study("table4", overrides={"out": tmp_path}, protocol="paper")
    assert all(c.train["captions_per_image"] == 1 for c in study.cells)
    assert {c.train.get("weights_ref_bits") for c in study.cells
            if c.train.get("method", "duch") == "duch"} == {0}
    assert load_study(builtin_study_path("table4"), overrides={"out": tmp_path}).protocol \
        == "duchkit"
