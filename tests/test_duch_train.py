"""The trainer: determinism, resume, splits, ablations, bad input, and that it learns."""
import dataclasses

import numpy as np
import pytest
import torch

from duchkit.hashing.data import Features, split_indices
from duchkit.hashing.synthetic import class_structured
from duchkit.hashing.train import TrainConfig, encode, train

SMALL = TrainConfig(bits=16, epochs=3, batch_size=64, hidden=64, seed=3,
                    checkpoint_seconds=0)  # every epoch: interruptions are tested per epoch
QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def feats():
    return class_structured(n_images=300, n_classes=6, image_dim=32, text_dim=24,
                            image_views=2, seed=0)


# the setting in which a few epochs learn the synthetic classes
LEARNS = dataclasses.replace(SMALL, bits=32, epochs=12, hidden=128, batch_size=32, lr=1e-3)


@pytest.fixture(scope="module")
def learned(feats):
    """One fp32 training of LEARNS, shared by the tests that look at a trained model."""
    return train(LEARNS, feats, **QUIET)


def codes(result, f):
    return torch.cat([encode(result.model.image, f.image), encode(result.model.text, f.text[:, 0])])


def test_same_seed_same_codes_other_seed_other_codes(feats):
    a, b = train(SMALL, feats, **QUIET), train(SMALL, feats, **QUIET)
    assert torch.equal(codes(a, feats), codes(b, feats))
    assert a.history == b.history
    c = train(dataclasses.replace(SMALL, seed=4), feats, **QUIET)
    assert not torch.equal(codes(a, feats) >= 0, codes(c, feats) >= 0)


def test_resume_after_interrupt_equals_uninterrupted(feats, tmp_path):
    cfg = dataclasses.replace(SMALL, epochs=4)
    whole = train(cfg, feats, tmp_path / "whole", **QUIET)
    train(cfg, feats, tmp_path / "cut", stop_after=2, **QUIET)  # "interrupted" after epoch 2
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1
    resumed = train(cfg, feats, tmp_path / "cut", resume=True, **QUIET)
    assert resumed.history == whole.history
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.best_epoch == whole.best_epoch


def test_checkpoints_are_spaced_in_time_and_the_last_epoch_is_always_saved(feats, tmp_path,
                                                                           monkeypatch):
    import duchkit.hashing.train as train_module

    saved = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, state: saved.append(state["epoch"]) or real(path, state))
    cfg = dataclasses.replace(SMALL, epochs=4, checkpoint_seconds=3600)
    train(cfg, feats, tmp_path / "spaced", stop_after=3, **QUIET)  # cut before the hour is up
    assert saved == [] and not (tmp_path / "spaced" / "checkpoint.pt").exists()
    train(cfg, feats, tmp_path / "spaced", **QUIET)
    assert saved == [3]  # the last epoch, whatever the time
    saved.clear()
    train(dataclasses.replace(cfg, checkpoint_seconds=0, checkpoint_every=2), feats,
          tmp_path / "every-2", **QUIET)
    assert saved == [1, 3]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="checkpoint_seconds"):
            dataclasses.replace(cfg, checkpoint_seconds=bad).validate()


def test_checkpoint_of_another_bit_length_is_refused(feats, tmp_path):
    train(SMALL, feats, tmp_path, stop_after=1, **QUIET)
    with pytest.raises(ValueError, match="bits"):
        train(dataclasses.replace(SMALL, bits=32), feats, tmp_path, resume=True, **QUIET)


def test_splits_are_disjoint_seeded_and_paper_sized():
    s = split_indices(2100, seed=7)
    sizes = {k: len(v) for k, v in s.items()}
    assert sizes == {"val": 105, "train": 945, "query": 210, "retrieval": 840}
    union = np.concatenate(list(s.values()))
    assert len(np.unique(union)) == 2100  # disjoint and complete
    assert not set(s["val"]) & (set(s["query"]) | set(s["retrieval"]))
    assert all((s[k] == split_indices(2100, seed=7)[k]).all() for k in s)
    assert not (s["query"] == split_indices(2100, seed=8)["query"]).all()


def test_no_adversarial_ablation_never_trains_the_discriminator(feats):
    r = train(SMALL.with_ablation("DUCH-NA"), feats, **QUIET)
    torch.manual_seed(SMALL.seed)  # the discriminator's initial weights under this seed
    from duchkit.hashing.model import DUCH

    init = DUCH(feats.image_dim, feats.text_dim, 16, 64).discriminator.state_dict()
    for k, v in r.model.discriminator.state_dict().items():
        assert torch.equal(v, init[k]), k
    assert all(row["adversarial"] == 0 for row in r.history)
    full = train(SMALL, feats, **QUIET)
    assert all(row["adversarial"] > 0 for row in full.history)
    cl = train(SMALL.with_ablation("DUCH-CL"), feats, **QUIET)
    assert all(row["intra_image"] == 0 and row["intra_text"] == 0 for row in cl.history)


def test_training_learns_class_structure(feats, learned):
    from duchkit.hashing.codes import pack, to_bits
    from duchkit.hashing.metrics import evaluate_direction

    r = learned
    untrained = train(dataclasses.replace(LEARNS, epochs=1, lr=0.0, disc_lr=0.0), feats, **QUIET)

    def i2t(res):
        q, d = res.splits["query"], res.splits["retrieval"]
        qi = pack(to_bits(encode(res.model.image, feats.image[q])))
        dt = pack(to_bits(encode(res.model.text, feats.text[d, 0])))
        return evaluate_direction(qi, dt, feats.labels[q].numpy(), feats.labels[d].numpy())["map"]

    assert i2t(r) > 0.8
    assert i2t(r) > i2t(untrained) + 0.3
    # the kept epoch: the latest within one standard error of the best validation mAP
    val = [row["val_map"] for row in r.history]
    top = int(np.argmax(val))
    within = [e for e, v in enumerate(val) if v >= val[top] - r.history[top]["val_se"]]
    assert r.best_epoch == max(within) + 1 >= top + 1
    assert r.best_val_map == val[r.best_epoch - 1] and r.history[top]["val_se"] > 0


def test_selection_se_zero_keeps_the_best_epoch_and_a_wide_tolerance_the_last(feats):
    cfg = dataclasses.replace(SMALL, epochs=6)
    best = train(dataclasses.replace(cfg, selection_se=0.0), feats, **QUIET)
    val = [row["val_map"] for row in best.history]
    assert best.best_epoch == max(e for e, v in enumerate(val) if v == max(val)) + 1
    assert torch.equal(codes(best, feats), codes(train(dataclasses.replace(
        cfg, selection_se=0.0), feats, **QUIET), feats))
    last = train(dataclasses.replace(cfg, selection_se=1e6), feats, **QUIET)
    assert last.history == best.history and last.best_epoch == 6  # training is the same
    with pytest.raises(ValueError, match="selection_se"):
        train(dataclasses.replace(cfg, selection_se=-1.0), feats, **QUIET)
    # a one-image validation slice has no standard error: the rule falls back to the best epoch
    tiny = class_structured(n_images=22, n_classes=2, image_dim=32, text_dim=24, seed=1)
    one = train(dataclasses.replace(cfg, batch_size=8, captions_per_image=1), tiny, **QUIET)
    assert len(one.splits["val"]) == 1 and all(row["val_se"] == 0 for row in one.history)
    val = [row["val_map"] for row in one.history]
    assert one.best_epoch == max(e for e, v in enumerate(val) if v == max(val)) + 1


def test_bad_input_is_refused(feats):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(dataclasses.replace(SMALL, batch_size=256), feats, **QUIET)
    bad = feats.image.clone()
    bad[5, 2] = float("nan")
    with pytest.raises(ValueError, match=r"image embeddings contain NaN/inf \(image rows \[5\]"):
        Features(bad, feats.image_aug, feats.text, feats.text_aug, feats.labels)
    with pytest.raises(ValueError, match="augmented caption"):
        Features(feats.image, feats.image_aug, feats.text, feats.text_aug[:, :, :5], feats.labels)
    with pytest.raises(ValueError, match="bits=12"):
        train(dataclasses.replace(SMALL, bits=12), feats, **QUIET)
    with pytest.raises(ValueError, match="unknown ablation"):
        SMALL.with_ablation("DUCH-XX")


def test_l2_input_norm_ignores_embedding_norms(feats):
    """The default model sees unit-norm embeddings: rescaling each row (as a different encoder
    pooling would) leaves the codes unchanged; with input_norm='none' it changes them."""
    scale = torch.rand(feats.n, 1, generator=torch.Generator().manual_seed(1)) * 20 + 0.05
    for norm, same in (("l2", True), ("none", False)):
        r = train(dataclasses.replace(SMALL, input_norm=norm), feats, **QUIET)
        assert r.model.image.input_norm == norm
        a, b = encode(r.model.image, feats.image), encode(r.model.image, feats.image * scale)
        assert torch.equal(a >= 0, b >= 0) is same, norm
    with pytest.raises(ValueError, match="input_norm='max'"):
        dataclasses.replace(SMALL, input_norm="max").validate()


def test_checkpoint_from_before_input_norm_loads_as_raw_input(feats, tmp_path):
    from duchkit.hashing.checkpoint import save_checkpoint
    from duchkit.hashing.train import load_model

    cfg = dataclasses.replace(SMALL, input_norm="none", epochs=2)
    train(cfg, feats, tmp_path, **QUIET)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del ck["shape"]["input_norm"]  # what a checkpoint of an earlier version holds
    save_checkpoint(tmp_path / "checkpoint.pt", ck)
    model, _ = load_model(tmp_path / "checkpoint.pt")
    assert model.input_norm == "none"
    train(dataclasses.replace(cfg, epochs=3), feats, tmp_path, resume=True, **QUIET)
    with pytest.raises(ValueError, match="input_norm"):  # the l2 default cannot resume it
        train(dataclasses.replace(SMALL, epochs=3), feats, tmp_path, resume=True, **QUIET)


def test_compiled_training_matches_eager_and_its_checkpoint_loads(feats, tmp_path):
    """`--compile` must train the same model, not just run: the compiled networks share the
    eager modules' parameters, so checkpoints keep plain keys that `load_model` reads."""
    from duchkit.hashing.train import load_model

    cfg = dataclasses.replace(SMALL, epochs=2)
    eager = train(cfg, feats, **QUIET)
    compiled = train(dataclasses.replace(cfg, compile=True), feats, tmp_path, **QUIET)
    for a, b in zip(eager.history, compiled.history):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    model, _ = load_model(tmp_path / "checkpoint.pt")
    agree = (encode(model.image, feats.image) >= 0) == (encode(eager.model.image, feats.image) >= 0)
    assert agree.float().mean() > 0.99  # not exact: fused kernels round differently near 0


def test_amp_trains_in_bf16_on_this_device_and_still_learns(feats, learned):
    """`--amp` is real on CPU too: the losses differ from fp32 (bf16 rounding), the codes of
    the two runs mostly agree, and the bf16 run learns the classes as the fp32 one does."""
    fp32 = learned
    bf16 = train(dataclasses.replace(LEARNS, amp=True), feats, **QUIET)
    assert fp32.history[0]["total"] != bf16.history[0]["total"]
    assert bf16.history[0]["total"] == pytest.approx(fp32.history[0]["total"], rel=0.02)
    agree = (codes(fp32, feats) >= 0) == (codes(bf16, feats) >= 0)
    assert agree.float().mean() > 0.95
    assert bf16.best_val_map > fp32.best_val_map - 0.05


def test_amp_on_a_cpu_without_bf16_units_warns(feats, monkeypatch):
    import duchkit.hashing.train as hashing_train

    monkeypatch.setattr(hashing_train, "cpu_has_bf16", lambda: False)
    lines = []
    train(dataclasses.replace(SMALL, epochs=1, amp=True), feats, log=lines.append)
    assert any("no bf16 units" in line for line in lines)


def test_every_caption_variant_reaches_the_trainer(feats):
    """`variants = N` text augmentation: the trainer draws one variant per image and epoch."""
    variants = torch.stack([feats.text_aug, feats.text_aug * 0.5, -feats.text_aug], dim=2)
    three = Features(feats.image, feats.image_aug, feats.text, variants, feats.labels)
    assert three.variants == 3 and feats.variants == 1
    a = train(SMALL, three, **QUIET)
    b = train(SMALL, Features(feats.image, feats.image_aug, feats.text, variants[:, :, :1],
                              feats.labels), **QUIET)
    assert a.history != b.history  # the other variants were used
    with pytest.raises(ValueError, match="one or A variants"):
        Features(feats.image, feats.image_aug, feats.text, variants[:, :2], feats.labels)


def test_the_archive_loader_keeps_every_variant(tmp_path):
    import pyarrow as pa

    from duchkit.pipelines.schema import CAPTION_EMBEDDING, AUGMENTED_EMBEDDING, embedding_column
    from duchkit.pipelines.store import write_stage_folder
    from duchkit.pipelines.training_data import load_archive
    from tests.duch_shards import write_stages

    f = class_structured(n_images=20, n_classes=2, image_dim=8, text_dim=6, image_views=1,
                         seed=0)
    images, _ = write_stages(tmp_path / "emb", f, shard_rows=50)
    rows = [(i, c, v) for i in range(20) for c in range(f.captions) for v in range(2)]
    cap = np.stack([f.text[i, c].numpy() for i, c, _ in rows])
    aug = np.stack([f.text_aug[i, c].numpy() * (1 + v) for i, c, v in rows])
    cf, ca = embedding_column(CAPTION_EMBEDDING, cap, "t", "w", "p")
    af, aa = embedding_column(AUGMENTED_EMBEDDING, aug, "t", "w", "p")
    table = pa.table({"image_id": [f"img{i:05d}" for i, _, _ in rows],
                      "caption_index": pa.array([c for _, c, _ in rows], pa.int16()),
                      "variant_index": pa.array([v for _, _, v in rows], pa.int16()),
                      "label": [str(int(f.labels[i])) for i, _, _ in rows]})
    table = table.append_column(cf, ca).append_column(af, aa)
    write_stage_folder(tmp_path / "texts", table, "texts", "embed", {})
    a = load_archive(images, tmp_path / "texts")
    assert a.features.variants == 2 and a.sources["caption_variants"] == 2
    assert torch.allclose(a.features.text_aug[:, :, 1], a.features.text_aug[:, :, 0] * 2)
