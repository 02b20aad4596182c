"""The baselines of Tables IV/V, DJSRH and JDSH (hashing.baselines): they learn, they are
deterministic and resumable, they refuse DUCH-only options, `duchkit train --method` writes a
run folder the rest of duchkit reads, and the table4 study prints the paper's figures for them."""
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from duchkit.hashing.baselines import DJSRH, JDSH, Thresholds
from duchkit.hashing.codes import pack, to_bits
from duchkit.hashing.metrics import map_at_k_torch
from duchkit.hashing.synthetic import class_structured
from duchkit.hashing.train import TrainConfig, encode, load_model, train
from duchkit.pipelines.cli import main
from duchkit.pipelines.store import StageStore
from duchkit.pipelines.study import builtin_study_path, load_study
from duchkit.pipelines.training_data import load_archive
from tests.duch_shards import write_stages

METHODS = ("djsrh", "jdsh")
SMALL = TrainConfig(bits=16, epochs=3, batch_size=64, hidden=64, seed=3,
                    checkpoint_seconds=0)  # every epoch: interruptions are tested per epoch
LEARNS = dataclasses.replace(SMALL, bits=32, epochs=12, hidden=128, batch_size=32, lr=1e-3)
QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def feats():
    return class_structured(n_images=300, n_classes=6, image_dim=32, text_dim=24,
                            image_views=2, seed=0)


def codes(result, f):
    return torch.cat([encode(result.model.image, f.image), encode(result.model.text, f.text[:, 0])])


def cross_modal_map(image_codes, text_codes, f, splits):
    """(I->T, T->I) mAP@20 of the query split against the retrieval split, by class."""
    q, d = torch.as_tensor(splits["query"]), torch.as_tensor(splits["retrieval"])
    lab = f.labels
    return (map_at_k_torch(image_codes[q], text_codes[d], lab[q], lab[d], 20).item(),
            map_at_k_torch(text_codes[q], image_codes[d], lab[q], lab[d], 20).item())


@pytest.mark.parametrize("method", METHODS)
def test_baseline_learns_the_classes_far_above_random_codes(feats, method):
    result = train(dataclasses.replace(LEARNS, method=method), feats, **QUIET)
    trained = cross_modal_map(encode(result.model.image, feats.image),
                              encode(result.model.text, feats.text[:, 0]), feats, result.splits)
    g = torch.Generator().manual_seed(0)
    random = cross_modal_map(torch.randn(feats.n, 32, generator=g),
                             torch.randn(feats.n, 32, generator=g), feats, result.splits)
    for ours, chance in zip(trained, random):  # 6 classes: random codes score ~0.25
        assert ours > 0.75 and ours > chance + 0.4, (method, trained, random)
    assert set(result.history[-1]) >= {"total", "image_text", "val_map", "code_scale"}
    assert result.pair_weights is None and 1 <= result.best_epoch <= LEARNS.epochs


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_codes_other_seed_other_codes(feats, method):
    cfg = dataclasses.replace(SMALL, method=method)
    a, b = train(cfg, feats, **QUIET), train(cfg, feats, **QUIET)
    assert torch.equal(codes(a, feats), codes(b, feats))
    assert a.history == b.history
    c = train(dataclasses.replace(cfg, seed=4), feats, **QUIET)
    assert not torch.equal(codes(a, feats) >= 0, codes(c, feats) >= 0)


def test_resume_after_interrupt_equals_uninterrupted(feats, tmp_path):
    cfg = dataclasses.replace(SMALL, method="jdsh", epochs=4)  # jdsh: thresholds resume too
    whole = train(cfg, feats, tmp_path / "whole", **QUIET)
    train(cfg, feats, tmp_path / "cut", stop_after=2, **QUIET)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["config"]["method"] == "jdsh" and ck["thresholds"]
    resumed = train(cfg, feats, tmp_path / "cut", resume=True, **QUIET)
    assert resumed.history == whole.history
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # a checkpoint continues only its own method, either way
    with pytest.raises(ValueError, match="method 'jdsh'"):
        train(dataclasses.replace(cfg, method="djsrh"), feats, tmp_path / "cut", resume=True,
              **QUIET)
    with pytest.raises(ValueError, match="method 'jdsh'"):
        train(dataclasses.replace(cfg, method="duch"), feats, tmp_path / "cut", resume=True,
              **QUIET)


def test_djsrh_target_is_the_joint_semantics_matrix():
    torch.manual_seed(0)
    f_img, f_txt = torch.randn(5, 7), torch.randn(5, 3)
    m = DJSRH()
    a, b = torch.nn.functional.normalize(f_img), torch.nn.functional.normalize(f_txt)
    s = m.beta * (2 * a @ a.T - 1) + (1 - m.beta) * (2 * b @ b.T - 1)
    expected = m.mu * ((1 - m.eta) * s + m.eta * s @ s / 5)
    assert torch.allclose(m.target(f_img, f_txt), expected, atol=1e-6)
    # identical items: every affinity 1, so the target is mu everywhere
    same = m.target(torch.ones(4, 7), torch.ones(4, 3))
    assert torch.allclose(same, torch.full((4, 4), m.mu))
    # codes whose cosines are the target cost nothing
    codes_ = torch.ones(4, 8)
    terms = DJSRH(mu=1.0).losses(codes_, codes_, torch.ones(4, 4))
    assert float(terms["total"]) == pytest.approx(0.0)


def test_jdsh_decides_and_weighs_by_the_distribution():
    m = JDSH()
    rng = np.random.default_rng(0)
    values = torch.as_tensor(np.concatenate([rng.normal(0.0, 0.1, 20000),
                                             0.05 + rng.laplace(0.0, 0.2, 20000).clip(0)]))
    th = m.fit(values)
    assert abs(th.mode) < 0.05 and th.left < th.mode < th.right
    assert th.s_min == pytest.approx(float(values.min()))
    assert th.s_max == pytest.approx(float(values.max()))
    # DSDW on a joint matrix: pushed apart below left, pulled together above right, the rest
    # unchanged, and never by more than 1 + l
    th = Thresholds(mode=0.0, left=-0.3, right=0.3, s_min=-0.8, s_max=0.9)
    f_img, f_txt = torch.randn(32, 6), torch.randn(32, 6)
    joint = m.joint(f_img, f_txt)
    target = m.target(f_img, f_txt, th) / m.mu
    low, high = joint < th.left, joint > th.right
    assert low.any() and high.any()
    assert torch.allclose(target[~low & ~high], joint[~low & ~high])
    assert (target[low] <= joint[low]).all() and (target[high] >= joint[high]).all()
    ratio = target[low | high] / joint[low | high]
    assert (ratio >= 1).all() and (ratio <= 1 + max(m.l_left, m.l_right) + 1e-6).all()
    assert torch.allclose(joint, joint.T, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"robust": "gmm"}, "robust='gmm' with method='djsrh'"),
    ({"tau": 0.5}, "tau=0.5 with method='djsrh'"),
    ({"method": "cvh"}, "method='cvh'"),
])
def test_options_a_baseline_cannot_honour_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**{"method": "djsrh", **changes}).validate()
    with pytest.raises(ValueError, match="lambda_text=0.0 with method='jdsh'"):
        TrainConfig(method="jdsh").with_ablation("DUCH-CL-I").validate()
    # injected noise is data, not an objective: the baselines train on it (CHNR's comparison)
    TrainConfig(method="jdsh", noise_rate=0.2).validate()


@pytest.fixture(scope="module")
def stages(feats, tmp_path_factory):
    return write_stages(tmp_path_factory.mktemp("emb"), feats, shard_rows=250)


def test_cli_train_method_writes_a_run_folder_evaluate_reads(stages, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--images", str(stages[0]), "--texts", str(stages[1]), "--out", str(run),
            "--bits", "32", "--epochs", "8", "--batch-size", "32", "--hidden", "128", "--lr",
            "1e-3", "--device", "cpu"]
    assert main(args + ["--method", "djsrh"]) == 0
    assert "trained DJSRH 32 bits" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["method"] == "djsrh" and 1 <= info["best_epoch"] <= 8
    m = json.loads((run / "metrics.json").read_text())["results"]
    assert m["i2t"]["map"] > 0.6 and m["t2i"]["map"] > 0.6
    assert main(["evaluate", "--run", str(run), "--map-variant", "authors", "--captions",
                 "one"]) == 0
    authors = json.loads((run / "metrics-authors-class-one-caption.json").read_text())
    assert authors["results"]["i2t"]["map"] > 0.6
    # the checkpoint loads as `duchkit search` loads it and gives the run's own codes
    model, _ = load_model(run / "checkpoint.pt")
    table = StageStore(run / "codes").read_all().to_pandas()
    written = np.stack(table[table["item"] == "image"]["code"].to_numpy())
    assert (written == pack(to_bits(encode(model.image, load_archive(*stages).features.image)))
            ).all()
    # options the method cannot honour: a one-line error, exit 2, nothing trained
    capsys.readouterr()
    assert main(args[:6] + [str(tmp_path / "r2")] + args[7:]
                + ["--method", "jdsh", "--robust", "gmm"]) == 2
    assert "robust='gmm' with method='jdsh'" in capsys.readouterr().err
    assert main(args[:6] + [str(tmp_path / "r3")] + args[7:]
                + ["--method", "jdsh", "--tune-trials", "2"]) == 2
    assert "--tune" in capsys.readouterr().err and not (tmp_path / "r3" / "run.json").exists()


def _table_iv_rows(text: str) -> dict[tuple[str, str], list[float]]:
    """(task, method) -> the four figures of the paper's Table IV (UCMerced)."""
    start = text.index("TABLE IV:")
    block = text[start:text.index("TABLE V:", start)]
    rows, task = {}, None
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not re.fullmatch(r"0\.\d+", cells[-1]):
            continue
        if cells[0]:  # "$I \to T$", then the T -> I rows
            task = "i2t" if cells[0].startswith("$I") else "t2i"
        rows[(task, cells[1].split(" [")[0])] = [float(c) for c in cells[-4:]]
    return rows


def test_table4_study_has_the_baselines_with_the_papers_figures(tmp_path, shared_data):
    text = (shared_data.parent / "paper" / "duch-paper.txt").read_text()
    table = _table_iv_rows(text)
    assert table[("i2t", "DJSRH")] == [0.686, 0.711, 0.735, 0.754]  # the parser reads the table
    study = load_study(builtin_study_path("table4"), overrides={"out": tmp_path})
    by_label = {c.label: c for c in study.cells}
    for name, method in (("DUCH", None), ("DJSRH", "djsrh"), ("JDSH", "jdsh")):
        for col, bits in enumerate((16, 32, 64, 128)):
            cell = by_label[f"{name} {bits} bits"]
            # DUCH cells name no method, so their ids (and finished runs) are unchanged
            assert cell.train == ({"bits": bits} if method is None
                                  else {"bits": bits, "method": method})
            key = "DUCH (proposed)" if name == "DUCH" else name
            for task in ("i2t", "t2i"):
                assert cell.paper[task] == pytest.approx(table[(task, key)][col]), \
                    (cell.label, task)
            if method:  # compared with DUCH at the same bit length
                assert cell.reference == by_label[f"DUCH {bits} bits"].id
