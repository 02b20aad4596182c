"""Rule-based caption augmentation (Algorithm 1) on real UCM captions with the real offline
models: spaCy en_core_web_sm, GloVe 6B 50d, all-MiniLM-L6-v2 BERTScore."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from duchkit.augment.caption_text import tokenize
from duchkit.augment.rule_augment import (CHANGED, EMPTY, FUNCTION_WORDS, NO_WORDS, RuleAugmenter,
                                          RuleConfig, split_caption)
from duchkit.pipelines.stage import StageContext
from duchkit.pipelines.stages.rule_augment import RuleAugment

THRESHOLD = 0.75


@pytest.fixture(scope="module")
def ucm_captions(shared_data):
    data = json.loads((shared_data / "ucm" / "captions.json").read_text())
    return [s["raw"] for im in data["images"] for s in im["sentences"]]


@pytest.fixture(scope="module")
def sample(ucm_captions):
    """~50 distinct captions spread over all 21 classes, plus the farmland one."""
    distinct = sorted(set(ucm_captions))
    return distinct[::40] + ["There is a piece of farmland ."]


def fresh(rule_stage, shared: bool = True, **config) -> RuleAugmenter:
    """An augmenter with the stage's loaded models; with empty caches unless `shared` (the
    F1 of a pair and the tags of a sentence do not depend on the config: sharing the stage's
    caches keeps this file's runtime down)."""
    a = rule_stage.augmenter
    from duchkit.augment.bertscore_filter import BertScoreF1
    from duchkit.augment.glove_neighbours import GloveNeighbours

    if shared:
        aug = RuleAugmenter(a.tagger, a.neighbours, a.scorer, RuleConfig(**config))
        aug.tag_cache = a.tag_cache
        return aug
    return RuleAugmenter(a.tagger, GloveNeighbours(a.neighbours.kv, 10, 0.65),
                         BertScoreF1(a.scorer.scorer, 256), RuleConfig(**config))


@pytest.fixture(scope="module")
def results(rule_stage, sample):
    aug = fresh(rule_stage, shared=False)
    return aug, aug.augment(sample)


def steps(caption, result):
    """The sentence right after each replacement, in order (Algorithm 1 is sequential)."""
    tokens, gaps = split_caption(caption)
    out = []
    for r in result.replacements:
        tokens[r.position] = r.new
        text = gaps[0] + "".join(t + g for t, g in zip(tokens, gaps[1:]))
        out.append((list(tokens), text))
    return out


def test_replacements_obey_every_filter(rule_stage, sample, results):
    aug, res = results
    kv = aug.neighbours.kv
    changed = [(c, r) for c, r in zip(sample, res) if r.changed]
    assert len(changed) > 0.5 * len(sample)  # the method does change most UCM captions
    orig_tags = dict(zip(sample, aug.tagger.tag([tokenize(c) for c in sample])))
    checks = [(c, r, s) for c, r in changed for r, s in zip(r.replacements, steps(c, r))]
    tags_after = aug.tagger.tag([s[0] for _, _, s in checks])
    # bert-score's own API, independent of our batching and reference-embedding cache
    f1_after = aug.scorer.scorer.score([s[1] for _, _, s in checks],
                                       [c for c, _, _ in checks], batch_size=64)[2].tolist()
    for (caption, rep, (tokens, text)), tags, f1 in zip(checks, tags_after, f1_after):
        old, new = rep.old.lower(), rep.new.lower()
        assert tokenize(caption)[rep.position] == rep.old
        assert orig_tags[caption][rep.position] in RuleConfig().replace_tags
        # same POS tag as the original word, in the sentence where it was substituted
        assert tags[rep.position] == orig_tags[caption][rep.position], (caption, rep)
        # a real GloVe neighbour with the recorded similarity, above the threshold
        assert new in [w for w, _ in kv.most_similar(old, topn=10)]
        assert rep.glove_similarity >= 0.65
        assert rep.glove_similarity == pytest.approx(float(kv.similarity(old, new)), abs=1e-5)
        # BERTScore against the ORIGINAL caption, recomputed independently
        assert rep.bertscore_f1 >= THRESHOLD
        assert rep.bertscore_f1 == pytest.approx(f1, abs=2e-4)


def test_provenance_matches_text_diff(sample, results):
    _, res = results
    for caption, r in zip(sample, res):
        before, after = tokenize(caption), tokenize(r.augmented)
        assert len(before) == len(after)
        diff = {i for i, (a, b) in enumerate(zip(before, after)) if a != b}
        assert diff == {x.position for x in r.replacements}
        for x in r.replacements:
            assert (before[x.position], after[x.position]) == (x.old, x.new)
        # the text between tokens is the input's, byte for byte: no new " ." artefacts
        assert split_caption(r.augmented)[1] == split_caption(caption)[1]
        assert r.changed == (r.augmented != caption) == (r.reason == CHANGED)
        positions = [x.position for x in r.replacements]
        assert positions == sorted(set(positions))  # at most one per marked token, in order
        _consistent(r)  # the chosen candidates are the replacements
    outcomes = Counter(c.outcome for r in res for c in r.candidates)
    assert outcomes["chosen"] == sum(len(r.replacements) for r in res)
    assert outcomes["pos_changed"] and outcomes["below_bertscore"] and outcomes["not_chosen"]


def test_no_space_before_period_unless_input_had_it(rule_stage):
    aug = fresh(rule_stage)
    tidy, spaced = aug.augment(["Many planes are parked at the airport.",
                                "Many planes are parked at the airport ."])
    assert tidy.changed and spaced.changed
    assert tidy.augmented.endswith(".") and " ." not in tidy.augmented
    assert spaced.augmented.endswith(" .")


def test_farmland_gets_a_glove_neighbour(rule_stage):
    aug = fresh(rule_stage, bertscore_threshold=0.7)
    r = aug.augment(["There is a piece of farmland ."])[0]
    rep = {x.old: x for x in r.replacements}
    assert "farmland" in rep, r
    neighbours = [w for w, _ in aug.neighbours.kv.most_similar("farmland", topn=10)]
    assert rep["farmland"].new in neighbours
    assert all(x.bertscore_f1 >= 0.7 for x in r.replacements)


def test_function_words_never_replace_nouns_or_verbs(rule_stage, sample, results):
    # GloVe 6B 50d puts "a" next to "piece", and spaCy tags "There is a a of farmland ." with
    # the second "a" as a noun, so the paper's filters alone accept it
    piece = "There is a piece of farmland ."
    paper_only = fresh(rule_stage, exclude_function_words=False).augment([piece])[0]
    assert {(x.old, x.new) for x in paper_only.replacements} >= {("piece", "a")}
    default = fresh(rule_stage).augment([piece])[0]
    assert "piece" not in {x.old for x in default.replacements} or all(
        x.new.lower() not in FUNCTION_WORDS for x in default.replacements)
    _, res = results
    assert not [x for r in res for x in r.replacements if x.new.lower() in FUNCTION_WORDS]


def test_threshold_filters_and_best_is_argmax(rule_stage, sample):
    small = sample[:12]
    loose = fresh(rule_stage, bertscore_threshold=None).augment(small)
    strict = fresh(rule_stage, bertscore_threshold=0.9).augment(small)
    assert sum(len(r.replacements) for r in strict) < sum(len(r.replacements) for r in loose)
    assert all(x.bertscore_f1 >= 0.9 for r in strict for x in r.replacements)
    assert any(x.bertscore_f1 < 0.75 for r in loose for x in r.replacements)


def test_dedup_each_distinct_caption_once(rule_stage, sample):
    distinct = sample[:15]
    once = fresh(rule_stage, shared=False)
    a = once.augment(distinct)
    many = fresh(rule_stage, shared=False)
    dup = distinct * 5
    np.random.default_rng(0).shuffle(dup)
    b = many.augment(dup)
    by_text = dict(zip(distinct, a))
    assert all(r.augmented == by_text[c].augmented for c, r in zip(dup, b))
    assert many.stats["units"] == len(distinct) and many.stats["captions"] == len(dup)
    assert many.stats["tagged_sentences"] == once.stats["tagged_sentences"]
    assert many.scorer.pairs_scored == once.scorer.pairs_scored
    # neighbours once per distinct marked word, in one vectorised pass per chunk
    marked_words = {x.old.lower() for r in a for x in r.replacements}
    assert many.neighbours.queries == len(many.neighbours.cache) - sum(
        1 for w in many.neighbours.cache if w not in many.neighbours)
    assert marked_words <= set(many.neighbours.cache)
    # the tagger and the scorer are called once per round, not once per caption or token
    assert many.stats["tagger_calls"] <= many.stats["rounds"] + 1
    assert many.scorer.calls <= many.stats["rounds"]
    # each original caption is embedded once as a reference, not once per round
    assert len(many.scorer.ref_embeddings) <= len(distinct)
    assert many.scorer.sentences_embedded <= many.scorer.pairs_scored + len(distinct)


def test_random_choice_is_seeded_per_caption(rule_stage, sample):
    small = sample[:12]
    ctx = StageContext(seed=7)

    def run(ids, texts):
        rngs = [ctx.rng_for(i, 0) for i in ids]
        return [r.augmented for r in fresh(rule_stage, choice="random").augment(texts, rngs)]

    ids = [f"c{i}" for i in range(len(small))]
    first = run(ids, small)
    assert first == run(ids, small)
    # the same caption alone, and in reverse order, draws the same
    assert run(ids[::-1], small[::-1]) == first[::-1]
    assert run(ids[3:4], small[3:4]) == first[3:4]
    other = [r.augmented for r in fresh(rule_stage, choice="random").augment(
        small, [StageContext(seed=8).rng_for(i, 0) for i in ids])]
    assert other != first  # another run seed draws differently
    best = [r.augmented for r in fresh(rule_stage).augment(small)]
    assert best != first


def test_bad_rows_have_a_reason_and_never_crash(rule_stage):
    # over MiniLM's 512-token limit, with a single noun (each noun costs a round of scoring)
    long = "The view shows " + "of the " * 260 + "farmland ."
    rows = ["", "   ", "... !!", "这是一个城市的遥感图像", "xqzv blorf wunkel .",
            long, "Two planes \ufffd at the airport ."]
    aug = fresh(rule_stage)
    res = aug.augment(rows)
    reasons = [r.reason for r in res]
    assert reasons[0] == reasons[1] == EMPTY
    assert reasons[2] == NO_WORDS
    assert reasons[3] in ("unknown_words", "no_marked_tokens", "no_candidates")
    assert reasons[4] in ("unknown_words", "no_marked_tokens", "no_candidates")
    assert not any(r.changed for r in res[:5])
    assert all(r.augmented == c for r, c in zip(res[:5], rows[:5]))
    assert res[5].scoring_truncated and not any(r.scoring_truncated for r in res[:5])
    # truncated for scoring only: the output keeps the whole caption
    assert len(tokenize(res[5].augmented)) == len(tokenize(long))
    assert res[6].changed


def test_config_errors_name_the_field(tmp_path):
    from duchkit.pipelines.stage import ConfigError

    cases = [({"tagger": "treetagger"}, "tagger"),
             ({"vectors": str(tmp_path / "missing.txt")}, "vectors"),
             ({"vectors": "missing-vectors.txt"}, "vectors"),
             ({"bertscore_threshold": 1.5}, "bertscore_threshold"),
             ({"bertscore_threshold": "high"}, "bertscore_threshold"),
             ({"glove_threshold": 2}, "glove_threshold"),
             ({"top_n": 0}, "top_n"),
             ({"choice": "first"}, "choice"),
             ({"variants": 3}, "variants"),
             ({"allow_function_words": "yes"}, "allow_function_words"),
             ({"bertscore_model": "dir:" + str(tmp_path / "nomodel")}, "bertscore_model"),
             ({"tagger": "nltk", "tagger_model": str(tmp_path / "nodata")}, "tagger_model")]
    for values, field in cases:
        with pytest.raises(ConfigError, match=field):
            RuleAugment.from_config(values, "[[stages]] rules")


def test_unavailable_models_fail_at_setup_naming_the_field(tmp_path):
    from duchkit.pipelines.stage import ConfigError

    (tmp_path / "stanza").mkdir()
    with pytest.raises(ConfigError, match="tagger_model.*stanza"):
        RuleAugment(tagger="stanza", tagger_model=str(tmp_path / "stanza")).setup(StageContext())
    with pytest.raises(ConfigError, match="bertscore_model"):
        RuleAugment(bertscore_model="hub:nobody/no-such-model").setup(StageContext())


def test_summary_counts_reasons():
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        t = pa.table({"reason": ["changed", "empty", "changed"], "changed": [True, False, True],
                      "n_replacements": pa.array([2, 0, 1], pa.int16()),
                      "scoring_truncated": [False, False, True]})
        pq.write_table(t, Path(d) / "part-00000.parquet")
        s = RuleAugment.summarise(None, [Path(d) / "part-00000.parquet"])
    assert s == {"reasons": {"changed": 2, "empty": 1}, "changed": 2, "scoring_truncated": 1,
                 "mean_replacements": 1.0}
    assert Counter(s["reasons"]) == Counter({"changed": 2, "empty": 1})


def test_windowed_tags_equal_whole_sentence_tags(rule_stage, ucm_captions):
    """The spaCy tagger's tag at i depends on tokens i-4..i+4 only (CNN depth 4, window 1),
    so Algorithm 1 tags short windows of candidate sentences. Check on real substitutions
    that the window's tag is the whole sentence's tag, for every one of them."""
    aug = rule_stage.augmenter
    r = aug.tagger.receptive_field
    assert r == 4
    distinct = sorted(set(ucm_captions))[::7]
    sentences = [tuple(split_caption(c)[0]) for c in distinct]
    items = []
    for tokens, tags in zip(sentences, aug.tagger.tag(sentences)):
        for i, tag in enumerate(tags):
            if tag in ("NN", "NNS", "VBG", "VBN") and tokens[i].isalpha():
                for cand, _ in aug.neighbours.neighbours([tokens[i].lower()]).get(
                        tokens[i].lower(), ())[:3]:
                    items.append((tokens[:i] + (cand,) + tokens[i + 1:], i))
    assert len(items) > 1000
    whole = [t[i] for t, (_, i) in zip(aug.tagger.tag([s for s, _ in items]), items)]
    windowed = RuleAugmenter(aug.tagger, aug.neighbours, aug.scorer)._tags_at(items)
    assert windowed == whole
    # the windows really are shorter than most sentences (else this tests nothing)
    assert sum(len(s) > 2 * r + 1 for s, _ in items) > len(items) / 2


def test_bf16_scores_stay_close_to_fp32(rule_stage, sample):
    from duchkit.augment.bertscore_filter import BertScoreF1

    scorer = rule_stage.augmenter.scorer.scorer
    cands = [r.augmented for r in fresh(rule_stage).augment(sample[:20]) if r.changed]
    refs = [c for c, r in zip(sample[:20], fresh(rule_stage).augment(sample[:20])) if r.changed]
    fp32 = BertScoreF1(scorer, 64, "fp32").f1(cands, refs)
    bf16 = BertScoreF1(scorer, 64, "bf16").f1(cands, refs)
    assert np.abs(fp32 - bf16).max() < 0.02
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        BertScoreF1(scorer, 64, "fp16")


def test_bertscore_batches_carry_no_padding(rule_stage, ucm_captions):
    """Sentences are batched by exact token count: every distinct sentence once, every batch
    one length, no batch over the batch size."""
    from duchkit.augment.bertscore_filter import BertScoreF1

    scorer = BertScoreF1(rule_stage.augmenter.scorer.scorer, 64)
    sentences = sorted(set(ucm_captions))[:500]
    batches = scorer._batches(sentences)
    assert sorted(s for b in batches for s in b) == sentences
    tok = scorer.scorer._tokenizer
    for b in batches:
        assert 1 <= len(b) <= 64
        assert len({len(tok(s)["input_ids"]) for s in b}) == 1


def test_fp16_on_the_cpu_is_a_config_error_naming_the_field():
    from duchkit.pipelines.stage import ConfigError

    with pytest.raises(ConfigError, match="field 'precision'"):
        RuleAugment(precision="fp16").setup(StageContext(device="cpu"))
    with pytest.raises(ConfigError, match="field 'precision'"):
        RuleAugment(precision="half")


# ---------------------------------------------------------------- candidate record (fake models)

def test_every_candidate_outcome_is_recorded_with_its_detail():
    from duchkit.augment.rule_augment import CANDIDATE_OUTCOMES
    from tests.fake_rule_models import CAPTION, fake_augmenter

    r = fake_augmenter().augment([CAPTION])[0]
    got = [(c.position, c.old, c.candidate, c.outcome, c.old_tag, c.tag,
            None if c.bertscore_f1 is None else round(c.bertscore_f1, 2)) for c in r.candidates]
    assert got == [
        (1, "planes", "aircraft", "pos_changed", "NNS", "NN", None),
        (1, "planes", "jets", "chosen", "NNS", "NNS", 0.90),
        (1, "planes", "the", "function_word", "NNS", "", None),
        (1, "planes", "u.s.", "not_single_token", "NNS", "", None),
        (3, "parked", "stationed", "not_chosen", "VBN", "VBN", 0.80),
        (3, "parked", "sitting", "chosen", "VBN", "VBN", 0.85),
        (7, "field", "meadow", "below_bertscore", "NN", "NN", 0.71),
        (7, "field", "grassy", "pos_changed", "NN", "JJ", None)]
    assert {c.outcome for c in r.candidates} == set(CANDIDATE_OUTCOMES)
    assert [c.glove_similarity for c in r.candidates] == pytest.approx(
        [0.80, 0.78, 0.75, 0.70, 0.70, 0.68, 0.70, 0.69])
    assert r.augmented == "Many jets are sitting near a green field ."
    # without the function-word rule, "the" goes on to the POS check (and fails it)
    free = fake_augmenter(exclude_function_words=False).augment([CAPTION])[0]
    assert [(c.outcome, c.tag) for c in free.candidates if c.candidate == "the"] == \
        [("pos_changed", "DT")]
    # no BERTScore filter: the meadow passes and, alone, is chosen
    loose = fake_augmenter(bertscore_threshold=None).augment([CAPTION])[0]
    assert [c.outcome for c in loose.candidates if c.old == "field"] == ["chosen",
                                                                          "pos_changed"]


def _consistent(result) -> None:
    chosen = [(c.position, c.old, c.candidate, c.glove_similarity, c.bertscore_f1)
              for c in result.candidates if c.outcome == "chosen"]
    assert chosen == [(x.position, x.old, x.new, pytest.approx(x.glove_similarity),
                       pytest.approx(x.bertscore_f1)) for x in result.replacements]
    # one chosen candidate at most per marked word, every candidate of a known outcome
    positions = [c[0] for c in chosen]
    assert positions == sorted(set(positions))
    from duchkit.augment.rule_augment import CANDIDATE_OUTCOMES
    assert all(c.outcome in CANDIDATE_OUTCOMES for c in result.candidates)


def test_candidates_agree_with_replacements():
    from tests.fake_rule_models import CAPTION, fake_augmenter

    captions = [CAPTION, "A field .", "Planes near a field .", "", "... !", "green", CAPTION]
    for config in ({}, {"max_replacements": 1}, {"bertscore_threshold": None}):
        for r in fake_augmenter(**config).augment(captions):
            _consistent(r)
    ctx = StageContext(seed=3)
    rngs = [ctx.rng_for(i, 0) for i in range(len(captions))]
    res = fake_augmenter(choice="random").augment(captions, rngs)
    for r in res:
        _consistent(r)
    # max_replacements = 1 stops after the first replacement: later words are not reached
    first = fake_augmenter(max_replacements=1).augment([CAPTION])[0]
    assert {c.old for c in first.candidates} == {"planes"}
    # nothing marked, or no text: no candidates
    assert [len(r.candidates) for r in fake_augmenter().augment(["", "... !", "green"])] == \
        [0, 0, 0]


def test_stage_writes_the_candidates_column():
    import pyarrow as pa

    from duchkit.pipelines.engines import conform
    from tests.fake_rule_models import CAPTION, fake_augmenter

    stage = RuleAugment()
    stage._augmenter = fake_augmenter()
    table = pa.table({"caption_id": ["c0", "c1"], "caption": [CAPTION, "green"]})
    out = conform(stage.process(table, StageContext()), stage.output_schema(table.schema),
                  stage.kind)
    rows = out.column("candidates").to_pylist()
    assert [len(c) for c in rows] == [8, 0]
    assert rows[0][1] == {"position": 1, "old": "planes", "candidate": "jets",
                          "glove_similarity": pytest.approx(0.78), "outcome": "chosen",
                          "old_tag": "NNS", "tag": "NNS", "bertscore_f1": pytest.approx(0.9)}
    assert rows[0][2]["bertscore_f1"] is None and rows[0][2]["tag"] == ""
    assert out.column("n_replacements").to_pylist() == [2, 0]
    raw = stage.process(table, StageContext())  # the declared type, before any cast
    assert raw.schema.field("candidates").type == out.schema.field("candidates").type


def test_embed_texts_carries_rule_output_with_or_without_candidates(tiny_bert_dir):
    import pyarrow as pa

    from duchkit.pipelines.engines import conform
    from duchkit.pipelines.stages.embed import EmbedTexts
    from tests.fake_rule_models import CAPTION, fake_augmenter

    stage = RuleAugment()
    stage._augmenter = fake_augmenter()
    table = pa.table({"caption_id": ["c0", "c1"], "caption": [CAPTION, "green"]})
    rules = conform(stage.process(table, StageContext()), stage.output_schema(table.schema),
                    stage.kind)
    embed = EmbedTexts(model=str(tiny_bert_dir), pooling="mean")
    for t in (rules, rules.drop_columns(["candidates"])):
        out = conform(embed.process(t, StageContext()), embed.output_schema(t.schema),
                      embed.kind)
        assert out.column("augmented_embedding").type.list_size == 32
        assert ("candidates" in out.column_names) == ("candidates" in t.column_names)
        if "candidates" in t.column_names:
            assert out.column("candidates").to_pylist() == t.column("candidates").to_pylist()
