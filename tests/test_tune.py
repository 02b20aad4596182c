"""Validation-driven settings: the tuner reads only the train part and the validation slice,
is reproducible by seed, starts from today's defaults, and --tune 0 is today's behaviour."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from duchkit.hashing.data import Features, split_indices
from duchkit.hashing.synthetic import class_structured
from duchkit.hashing.train import TrainConfig, train
from duchkit.hashing.tune import SPACE, tune
from duchkit.pipelines.cli import main
from tests.duch_shards import write_stages

pytest.importorskip("optuna")  # the `tune` extra; installed by tox

BASE = TrainConfig(bits=16, epochs=3, batch_size=32, hidden=32, seed=4, checkpoint_every=100)
QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def feats():
    return class_structured(n_images=160, n_classes=4, image_dim=16, text_dim=12,
                            image_views=2, seed=0)


def short_epochs(monkeypatch):
    # epochs are part of the search; keep trials short for a unit test
    monkeypatch.setitem(SPACE, "epochs", lambda t: t.suggest_int("epochs", 1, 3))


def test_trials_are_reproducible_and_start_from_the_defaults(feats, monkeypatch):
    short_epochs(monkeypatch)
    a_cfg, a = tune(BASE, feats, budget_s=0, trials=4, **QUIET)
    b_cfg, b = tune(BASE, feats, budget_s=0, trials=4, **QUIET)
    assert [r["params"] for r in a] == [r["params"] for r in b]
    assert [r["val_map"] for r in a] == [r["val_map"] for r in b] and a_cfg == b_cfg
    assert a[0]["params"] == {k: getattr(BASE, k) for k in SPACE}  # today's config first
    assert max(r["val_map"] for r in a) >= a[0]["val_map"]


def test_query_and_retrieval_items_never_influence_the_choice(feats, monkeypatch):
    short_epochs(monkeypatch)
    split = split_indices(feats.n, BASE.seed)
    held_out = torch.as_tensor(sorted(list(split["query"]) + list(split["retrieval"])))
    g = torch.Generator().manual_seed(9)
    poisoned = Features(feats.image.clone(), feats.image_aug.clone(), feats.text.clone(),
                        feats.text_aug.clone(), feats.labels.clone())
    poisoned.image[held_out] = torch.randn(len(held_out), feats.image_dim, generator=g) * 50
    poisoned.text[held_out] = torch.randn(len(held_out), *feats.text.shape[1:], generator=g)
    poisoned.labels[held_out] = (poisoned.labels[held_out] + 1) % 4
    clean_cfg, clean = tune(BASE, feats, budget_s=0, trials=3, **QUIET)
    bad_cfg, bad = tune(BASE, poisoned, budget_s=0, trials=3, **QUIET)
    assert clean_cfg == bad_cfg
    assert [r["val_map"] for r in clean] == [r["val_map"] for r in bad]


def test_tune_zero_is_todays_behaviour_and_a_tuned_run_records_its_trials(feats, tmp_path,
                                                                           monkeypatch):
    images, texts = write_stages(tmp_path / "emb", feats, shard_rows=80)
    common = ["--images", str(images), "--texts", str(texts), "--bits", "16", "--epochs", "3",
              "--batch-size", "32", "--hidden", "32", "--seed", "4", "--device", "cpu",
              "--quiet"]
    assert main(["train", "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["train", "--out", str(tmp_path / "zero"), "--tune", "0", *common]) == 0
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())
    zero = json.loads((tmp_path / "zero" / "run.json").read_text())
    assert plain["history"] == zero["history"] and "tuning" not in zero
    assert not (tmp_path / "zero" / "tune.json").exists()
    short_epochs(monkeypatch)
    assert main(["train", "--out", str(tmp_path / "tuned"), "--tune-trials", "3", *common]) == 0
    info = json.loads((tmp_path / "tuned" / "run.json").read_text())
    record = json.loads((tmp_path / "tuned" / "tune.json").read_text())
    assert info["tuning"]["trials"] == 3 and len(record["trials"]) == 3
    assert info["config"]["lr"] == record["chosen"]["lr"]


def test_a_negative_budget_is_refused(feats, tmp_path, capsys):
    images, texts = write_stages(tmp_path / "emb", feats, shard_rows=80)
    assert main(["train", "--images", str(images), "--texts", str(texts), "--out",
                 str(tmp_path / "r"), "--tune", "-5", "--device", "cpu", "--quiet"]) == 2
    assert "--tune must be >= 0" in capsys.readouterr().err


def test_decoupled_weight_decay_is_adamw(feats):
    a = train(dataclasses.replace(BASE, weight_decay=1e-2), feats, **QUIET)
    b = train(dataclasses.replace(BASE, weight_decay=1e-2, weight_decay_mode="decoupled"), feats,
              **QUIET)
    assert a.history[-1]["total"] != b.history[-1]["total"]
