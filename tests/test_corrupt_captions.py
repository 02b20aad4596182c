"""The `corrupt-captions` stage: exact, seeded, shard-independent noise that can be traced back.

Unit tests run on a synthetic records table (30 train + 6 val images, 3 classes, 4 captions
each); the end-to-end tests run `duchkit`'s runner on the embedded demo, corrupt-captions
feeding normalise-captions, over 3 shards.
"""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duchkit.augment.caption_noise import TEXT_KINDS, corrupt_text
from duchkit.augment.caption_text import normalise
from duchkit.pipelines.config import build_config
from duchkit.pipelines.runner import read_stage, run_pipeline
from duchkit.pipelines.schema import RECORD_SCHEMA
from duchkit.pipelines.stage import ConfigError, StageContext
from duchkit.pipelines.stages.corrupt_captions import KINDS, REPLACED, CorruptCaptions

ALL_KINDS = {"replaced-caption": 0.2, "missing-char": 0.1, "swapped-char": 0.1,
             "duplicated-char": 0.1, "replaced-char": 0.1, "removed-token": 0.1}
WORDS = ["farmland", "river", "bridge", "planes", "trees", "houses", "road", "beach"]


def records(n_train: int = 30, n_val: int = 6, per_image: int = 4, labels: bool = True
            ) -> pa.Table:
    rows = []
    for i in range(n_train + n_val):
        for k in range(per_image):
            rows.append({"dataset": "synth", "image_id": f"img{i:03d}",
                         "caption_id": f"img{i:03d}#{k}", "caption_index": k,
                         "label": f"class{i % 3}" if labels else None,
                         "split": "train" if i < n_train else "val", "image_path": None,
                         "caption": f"There are {k + 2} {WORDS[(i + k) % 8]} near a "
                                    f"{WORDS[(i * 3 + k) % 8]} , caption {i}-{k} ."})
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def corrupt(table: pa.Table, seed: int = 0, **params) -> pa.Table:
    return CorruptCaptions(**params).process(table, StageContext(seed=seed))


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["caption_id"]: r for r in table.to_pylist()}


def word_tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"\w+(?:[-'’]\w+)*", text) if any(c.isalpha() for c in t)]


# ---------------------------------------------------------------- exact and seeded

@pytest.mark.parametrize("unit", ["image", "caption"])
def test_exactly_round_rate_times_n_units_per_kind_and_only_in_the_splits(unit):
    table = records()
    out = corrupt(table, rates=ALL_KINDS, unit=unit)
    rows = out.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    n = len({r["image_id"] for r in train}) if unit == "image" else len(train)
    key = "image_id" if unit == "image" else "caption_id"
    units = Counter(k for k, _ in {(r["noise_kind"], r[key]) for r in train})
    for kind in KINDS:
        assert units[kind] == round(ALL_KINDS[kind] * n), (unit, kind)
    assert units["none"] == n - sum(round(r * n) for r in ALL_KINDS.values())
    assert all(r["noise_kind"] == "none" for r in rows if r["split"] == "val")
    if unit == "image":  # every caption of a chosen image has its image's kind
        kinds_of = {}
        for r in train:
            kinds_of.setdefault(r["image_id"], set()).add(r["noise_kind"])
        assert all(len(k) == 1 for k in kinds_of.values())


def test_splits_choose_what_is_corrupted():
    out = corrupt(records(), rates={"missing-char": 0.5}, splits=["val"])
    kinds = Counter((r["split"], r["noise_kind"]) for r in out.to_pylist())
    assert kinds[("train", "missing-char")] == 0 and kinds[("val", "missing-char")] == 3 * 4


def test_reproducible_by_seed_and_different_across_seeds():
    table = records()
    a, b = corrupt(table, 3, rates=ALL_KINDS), corrupt(table, 3, rates=ALL_KINDS)
    assert a.equals(b)
    c = corrupt(table, 4, rates=ALL_KINDS)
    assert a.column("noise_kind").to_pylist() != c.column("noise_kind").to_pylist()


def test_rows_order_and_sharding_do_not_change_anything(tmp_path):
    """The runner's path: `plan` over the input shards, then `process` per shard."""
    table = records()
    whole = by_id(corrupt(table, 5, rates=ALL_KINDS, unit="caption"))
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    for shard_rows in (7, 50, 1000):
        paths = []
        for i, start in enumerate(range(0, shuffled.num_rows, shard_rows)):
            paths.append(tmp_path / f"{shard_rows}-{i}.parquet")
            pq.write_table(shuffled.slice(start, shard_rows), paths[-1])
        stage, ctx = CorruptCaptions(rates=ALL_KINDS, unit="caption"), StageContext(seed=5)
        stage.plan(paths, ctx)
        parts = [stage.process(pq.read_table(p), ctx) for p in reversed(paths)]
        assert by_id(pa.concat_tables(parts)) == whole, shard_rows


def test_a_kind_with_rate_zero_and_no_rates_leave_the_caption_alone():
    out = corrupt(records(), rates={"missing-char": 0.0})
    assert set(out.column("noise_kind").to_pylist()) == {"none"}
    assert out.column("caption").equals(out.column("caption_clean"))
    assert set(out.column("noise_count").to_pylist()) == {0}


# ---------------------------------------------------------------- traceable, and what it says

def test_provenance_reconstructs_every_row():
    table = records()
    out = corrupt(table, 9, rates=ALL_KINDS, unit="caption", edits_per_row=2)
    clean = {r["caption_id"]: r["caption"] for r in table.to_pylist()}
    ctx = StageContext(seed=9)
    seen = Counter()
    for r in out.to_pylist():
        kind, cid = r["noise_kind"], r["caption_id"]
        seen[kind] += 1
        assert r["caption_clean"] == clean[cid]
        if kind == "none":
            assert r["caption"] == r["caption_clean"] and r["noise_count"] == 0
            assert r["noise_source_caption_id"] is None
        elif kind == REPLACED:
            assert r["caption"] == clean[r["noise_source_caption_id"]]
            assert r["noise_source_caption_id"].split("#")[0] == r["noise_source_image_id"]
            assert r["noise_count"] == 1
        else:
            again = corrupt_text(r["caption_clean"], kind, 2,
                                 ctx.rng_for("corrupt-captions", kind, cid))
            assert again == (r["caption"], r["noise_count"])
            assert r["noise_count"] == 2 and r["noise_source_image_id"] is None
    assert set(seen) == set(KINDS) | {"none"}


def _check_kind(kind: str, clean: str, noisy: str, n: int) -> None:
    assert noisy != clean and noisy.strip()
    if kind == "missing-char":
        assert len(noisy) == len(clean) - n
    elif kind == "duplicated-char":
        assert len(noisy) == len(clean) + n
    elif kind == "swapped-char":
        assert sorted(noisy) == sorted(clean)
    elif kind == "replaced-char":
        diff = [(a, b) for a, b in zip(clean, noisy) if a != b]
        assert len(noisy) == len(clean) and len(diff) == n
        assert all(a.isalpha() and b.isalpha() and a.isupper() == b.isupper() for a, b in diff)
    elif kind == "removed-token":
        before, after = word_tokens(clean), word_tokens(noisy)
        assert len(after) == len(before) - n
        it = iter(before)  # the words left are the caption's, in order
        assert all(w in it for w in after)
    # digits, punctuation and spacing outside words are never touched by the character kinds
    if kind in TEXT_KINDS and kind != "removed-token":
        assert re.sub(r"[^\W\d_]+", "", clean) == re.sub(r"[^\W\d_]+", "", noisy)


@pytest.mark.parametrize("kind", TEXT_KINDS)
@pytest.mark.parametrize("edits", [1, 3])
def test_every_text_kind_does_what_it_says(kind, edits):
    out = corrupt(records(), 1, rates={kind: 1.0}, edits_per_row=edits)
    for r in out.to_pylist():
        if r["split"] == "train":
            assert r["noise_kind"] == kind and r["noise_count"] == edits
            _check_kind(kind, r["caption_clean"], r["caption"], edits)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_text_kinds_on_captions_with_too_few_words(kind):
    rng = np.random.default_rng(0)
    assert corrupt_text("", kind, 1, rng) == ("", 0)
    assert corrupt_text("12 , 34 .", kind, 1, rng) == ("12 , 34 .", 0)
    text, n = corrupt_text("Trees .", kind, 5, rng)
    assert n == (0 if kind == "removed-token" else 1)  # one word: edited once, never removed
    if n:
        _check_kind(kind, "Trees .", text, n)
    assert corrupt_text("a ee .", "swapped-char", 1, rng) == ("a ee .", 0)  # nothing to swap
    assert corrupt_text("a b", "missing-char", 1, rng) == ("a b", 0)  # no word would vanish


def test_removed_token_keeps_spacing_and_punctuation():
    for seed in range(20):
        text, n = corrupt_text("Many planes, near a river.", "removed-token", 4,
                               np.random.default_rng(seed))
        assert n == 4 and len(word_tokens(text)) == 1
        assert "  " not in text and not text.startswith(" ") and text.count(",") == 1


@pytest.mark.parametrize("unit", ["image", "caption"])
@pytest.mark.parametrize("mode", ["cross-class", "shuffle"])
def test_a_replaced_caption_comes_from_another_image_of_another_class(unit, mode):
    table = records()
    out = corrupt(table, 2, rates={REPLACED: 0.5}, unit=unit, replace_mode=mode)
    label = {r["image_id"]: r["label"] for r in table.to_pylist()}
    split = {r["image_id"]: r["split"] for r in table.to_pylist()}
    replaced = [r for r in out.to_pylist() if r["noise_kind"] == REPLACED]
    assert replaced
    donors_of: dict[str, set] = {}
    for r in replaced:
        donor = r["noise_source_image_id"]
        assert donor != r["image_id"] and split[donor] == "train"
        if mode == "cross-class":
            assert label[donor] != r["label"]
        donors_of.setdefault(r["image_id"], set()).add(donor)
        if unit == "image":  # caption k of the donor replaces caption k
            assert r["noise_source_caption_id"] == f"{donor}#{r['caption_index']}"
    if unit == "image":
        assert all(len(d) == 1 for d in donors_of.values())
    if mode == "shuffle":  # same-class donors are allowed, so some appear
        assert any(label[d] == label[i] for i, ds in donors_of.items() for d in ds)


def test_shuffle_needs_no_labels_and_cross_class_does():
    table = records(labels=False)
    out = corrupt(table, rates={REPLACED: 0.3}, replace_mode="shuffle")
    assert Counter(out.column("noise_kind").to_pylist())[REPLACED] == 9 * 4
    with pytest.raises(ConfigError, match="replace_mode.*label.*shuffle"):
        corrupt(table, rates={REPLACED: 0.3})
    with pytest.raises(ConfigError, match="replace_mode.*no 'label' column"):
        CorruptCaptions(rates={REPLACED: 0.3}).output_schema(
            table.drop_columns(["label"]).schema)
    # no replacement asked for: labels are not needed
    corrupt(table, rates={"missing-char": 0.3})
    CorruptCaptions(rates={"missing-char": 0.3}).output_schema(
        table.drop_columns(["label"]).schema)


# ---------------------------------------------------------------- bad config

@pytest.mark.parametrize("values, field", [
    ({"rates": {"missing-char": 1.5}}, "rates"),
    ({"rates": {"missing-char": -0.1}}, "rates"),
    ({"rates": {"missing-char": True}}, "rates"),
    ({"rates": {"missing-char": 0.6, "replaced-caption": 0.6}}, "rates"),
    ({"rates": {"typo": 0.1}}, "rates"),
    ({"rates": [0.1]}, "rates"),
    ({"unit": "word"}, "unit"),
    ({"replace_mode": "random"}, "replace_mode"),
    ({"edits_per_row": 0}, "edits_per_row"),
    ({"edits_per_row": 1.5}, "edits_per_row"),
    ({"splits": []}, "splits"),
    ({"splits": ["training"]}, "splits"),
    ({"seed": 3}, "unknown field"),
])
def test_bad_config_names_the_field(values, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        CorruptCaptions.from_config(values, "stages[0]")


def test_bad_input_is_named():
    table = records()
    with pytest.raises(ConfigError, match="one row per caption"):
        corrupt(pa.concat_tables([table, table.slice(0, 1)]), rates={"missing-char": 0.1})
    with pytest.raises(ConfigError, match="already has column"):
        stage = CorruptCaptions(rates={"missing-char": 0.1})
        stage.output_schema(stage.output_schema(table.schema))
    # 0.5 + 0.5 of 3 images: round(1.5) + round(1.5) = 4 > 3
    with pytest.raises(ConfigError, match="rates.*4 > 3"):
        corrupt(records(3, 0), rates={"missing-char": 0.5, "swapped-char": 0.5})
    with pytest.raises(ConfigError, match="replace_mode.*two classes"):
        corrupt(records(1, 0), rates={REPLACED: 1.0})


# ---------------------------------------------------------------- the runner, on the demo

def demo_config(demo_dir, out, shard_rows=200, workers=1, captions=None, engine="local"):
    ucm = demo_dir / "ucm"
    stages = [{"name": "noisy", "kind": "corrupt-captions", "rates": ALL_KINDS,
               "edits_per_row": 2},
              {"name": "captions", "kind": "normalise-captions", "lowercase": True}]
    return build_config({
        "dataset": {"captions": str(captions or ucm / "captions.json"),
                    "images": str(ucm / "images"), "filename_map": str(ucm / "filename_map.tsv"),
                    "name": "demo"},
        "run": {"out": str(out), "shard_rows": shard_rows, "seed": 11, "workers": workers,
                "engine": engine},
        "stages": stages}, base=out.parent)


def sorted_rows(out, stage):
    return sorted(read_stage(out, stage).to_pylist(), key=lambda r: r["caption_id"])


def test_demo_run_feeds_normalise_exactly_and_resumes(demo_dir, tmp_path):
    out = tmp_path / "a"
    m = run_pipeline(demo_config(demo_dir, out), progress=False)
    assert len(m["records"]["shards"]) == 3 and m["noisy"]["rows"] == 525
    rows = sorted_rows(out, "captions")
    n_train = len({r["image_id"] for r in rows if r["split"] == "train"})  # 84 images
    assert m["noisy"]["summary"]["images"] == {
        **{k: round(r * n_train) for k, r in ALL_KINDS.items()},
        "none": n_train - sum(round(r * n_train) for r in ALL_KINDS.values()) + 21}  # + val/test
    for r in rows:  # normalise read the corrupted caption
        assert r["text"] == normalise(r["caption"], lowercase=True)
    assert sum(r["text"] != normalise(r["caption_clean"], lowercase=True) for r in rows) > 200

    again = run_pipeline(demo_config(demo_dir, out), progress=False)
    assert again["noisy"]["shards_computed"] == 0 and again["captions"]["shards_computed"] == 0

    # sharded otherwise and run in two worker processes (the plan travels with the stage)
    other = tmp_path / "b"
    run_pipeline(demo_config(demo_dir, other, shard_rows=90, workers=2), progress=False)
    assert sorted_rows(other, "noisy") == sorted_rows(out, "noisy")


def test_an_edited_caption_recomputes_every_shard(demo_dir, tmp_path):
    """One shard's change can move the draw of all the others: they are all recomputed."""
    out = tmp_path / "out"
    run_pipeline(demo_config(demo_dir, out), progress=False)
    data = json.loads((demo_dir / "ucm" / "captions.json").read_text())
    data["images"][-1]["sentences"][0]["raw"] = "An edited caption ."
    edited = tmp_path / "captions.json"
    edited.write_text(json.dumps(data))
    m = run_pipeline(demo_config(demo_dir, out, captions=edited), progress=False)
    assert m["noisy"]["shards_computed"] == 3 and m["noisy"]["shards_reused"] == 0


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_on_ray_equals_local(ray_cluster, demo_dir, tmp_path):
    run_pipeline(demo_config(demo_dir, tmp_path / "ray", workers=2, engine="ray"),
                 progress=False)
    run_pipeline(demo_config(demo_dir, tmp_path / "local"), progress=False)
    assert sorted_rows(tmp_path / "ray", "noisy") == sorted_rows(tmp_path / "local", "noisy")
