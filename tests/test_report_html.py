"""The report galleries: captions with their variants (replaced words marked, outcomes),
image views per setup, retrieval top-10 with relevant results marked; `duchkit inspect DIR
--html`; and the page as headless Chromium shows it (thumbnails that are pictures, no broken
images).

The folder under test is small and quick: twelve demo images (two of six classes) through the
real reader and augment-images stage, and stage / run folders written directly in the formats
the rule-augment and backtranslate stages and `duchkit train` write (no model is loaded)."""
from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow as pa
import pytest

from duchkit.pipelines.cli import main
from duchkit.pipelines.config import build_config
from duchkit.pipelines.galleries import (caption_gallery, folder_galleries, retrieval_gallery,
                                         view_gallery)
from duchkit.pipelines.report_html import render
from duchkit.pipelines.runner import read_stage, run_pipeline
from duchkit.pipelines.schema import fixed_size_list
from duchkit.pipelines.store import atomic_write_json, write_stage_folder
from tests.chromium_page import CHROMIUM, picture_blocks, render_page

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium "
                                    "(apt-get install chromium)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, demo_dir):
    """records + two augment-images stages (real), a rule-augment and a backtranslate stage
    folder and a run folder with codes (written in their formats)."""
    root = tmp_path_factory.mktemp("galleries")
    data = json.loads((demo_dir / "ucm" / "captions.json").read_text())
    by_class: dict[str, list] = {}
    for im in data["images"]:
        by_class.setdefault(im["classname"], []).append(im)
    data["images"] = [im for c in sorted(by_class)[:6] for im in by_class[c][:2]]
    (root / "captions.json").write_text(json.dumps(data))
    dataset = {"captions": str(root / "captions.json"),
               "images": str(demo_dir / "ucm" / "images"),
               "filename_map": str(demo_dir / "ucm" / "filename_map.tsv"), "name": "g"}
    out = root / "out"
    config = build_config({"dataset": dataset, "run": {"out": str(out), "shard_rows": 30},
                           "stages": [
                               {"name": "views", "kind": "augment-images", "input": "records",
                                "augmentation": "AugmentedCenterCrop", "views": 2},
                               {"name": "random-views", "kind": "augment-images",
                                "input": "records", "augmentation": "RandomAugmentation",
                                "views": 1}]}, base=root)
    run_pipeline(config, progress=False)
    records = read_stage(out, "records")
    ids = records.column("caption_id").to_pylist()
    caps = records.column("caption").to_pylist()
    labels = records.column("label").to_pylist()
    # rule-augment rows: the second word of every other caption replaced; the rest unchanged
    aug, reps, reasons = [], [], []
    for i, cap in enumerate(caps):
        words = cap.split(" ")
        if i % 2 == 0 and len(words) > 2:
            old, words[1] = words[1], "ZEBRA"
            aug.append(" ".join(words))
            reps.append([{"position": 1, "old": old, "new": "ZEBRA",
                          "glove_similarity": 0.71, "bertscore_f1": 0.83}])
            reasons.append("changed")
        else:
            aug.append(cap)
            reps.append([])
            reasons.append("no_candidates")
    n = len(ids)
    rule = pa.table({"caption_id": ids, "caption": caps, "label": labels, "augmented": aug,
                     "changed": [bool(r) for r in reps], "reason": reasons,
                     "replacements": reps, "method": ["rule"] * n,
                     "variant_index": pa.array([0] * n, pa.int16())})
    write_stage_folder(out / "rules", rule, "rules", "rule-augment", {})
    back = pa.table({"caption_id": ids, "caption": caps, "label": labels,
                     "augmented": [c.replace("There is", "Here is") for c in caps],
                     "outcome": ["ok"] * n, "pivot_path": [["en", "pt", "en"]] * n})
    write_stage_folder(out / "backtranslation", back, "backtranslation", "backtranslate", {})
    # a run folder: 16-bit codes that are the class's pattern with one bit flipped per item,
    # so the top results of a query are mostly, not only, its class
    views = read_stage(out, "views").filter(pa.compute.equal(
        read_stage(out, "views").column("view_index"), 0))
    image_ids = views.column("image_id").to_pylist()
    img_label = views.column("label").to_pylist()
    classes = sorted(set(img_label))
    rng = np.random.default_rng(0)
    pattern = {c: rng.integers(0, 256, 2, dtype=np.uint8) for c in classes}

    def code(label, k):
        c = pattern[label].copy()
        c[k % 2] ^= np.uint8(1 << (k % 8))
        return c

    split = ["query" if i % 2 == 0 else "retrieval" for i in range(len(image_ids))]
    split_of = dict(zip(image_ids, split))
    item = ["image"] * len(image_ids) + ["caption"] * n
    table = pa.table({
        "item": item, "image_id": image_ids + records.column("image_id").to_pylist(),
        "caption_id": [None] * len(image_ids) + ids, "label": img_label + labels,
        "split": split + [split_of[i] for i in records.column("image_id").to_pylist()],
        "code": fixed_size_list(np.stack([code(lab, k) for k, lab in
                                          enumerate(img_label + labels)]), pa.uint8())})
    run = out / "run16"
    write_stage_folder(run / "codes", table, "codes", "duch-codes", {})
    atomic_write_json(run / "run.json", {"inputs": {"images": str(out / "views"),
                                                    "texts": str(out / "records")},
                                         "config": {"bits": 16}})
    return out


def test_caption_gallery_marks_the_replaced_words_and_says_why(folder):
    page = caption_gallery([folder / "rules", folder / "backtranslation"], rows=6)
    assert page.count("<tr>") == 1 + 6
    assert '<mark class="new">ZEBRA</mark>' in page and '<mark class="old">' in page
    assert "GloVe 0.71, BERTScore 0.83" in page
    assert "unchanged: every GloVe neighbour" in page  # the outcome of an unchanged caption
    assert "Here is" in page and "en → pt → en" in page  # the back-translation, its pivots
    assert caption_gallery([folder / "views"]) == ""      # no caption variants there


def _rule_folder(root, with_candidates=True, shard_rows=100):
    """A rule-augment stage folder as the stage writes it, models faked (tests/fake_rule_models:
    one caption that meets every candidate outcome, one with no noun or verb)."""
    from duchkit.pipelines.engines import conform
    from duchkit.pipelines.stage import StageContext
    from duchkit.pipelines.stages.rule_augment import RuleAugment
    from duchkit.pipelines.store import write_stage_folder
    from tests.fake_rule_models import CAPTION, fake_augmenter

    stage = RuleAugment()
    stage._augmenter = fake_augmenter()
    table = pa.table({"caption_id": ["c0", "c1"], "caption": [CAPTION, "green"],
                      "label": ["airport", "forest"]})
    out = conform(stage.process(table, StageContext()), stage.output_schema(table.schema),
                  stage.kind)
    if not with_candidates:
        out = out.drop_columns(["candidates"])
    write_stage_folder(root, out, "rules", "rule-augment", stage.params(), shard_rows)
    return root


def test_caption_gallery_lists_each_words_candidates_with_their_outcome(tmp_path):
    page = caption_gallery([_rule_folder(tmp_path / "rules")])
    assert page.count('<details class="cands">') == 1  # the caption without candidates: none
    assert "8 GloVe candidates of 3 words, 2 chosen" in page
    for text in ('<span class="cand-chosen">jets</span> (chosen, F1 .90)',
                 "stationed (passed, F1 .80, not chosen)",
                 "meadow</span> (filtered: BERTScore .71 &lt; .75)",
                 "aircraft</span> (filtered: POS NNS→NN)",
                 "grassy</span> (filtered: POS NN→JJ)",
                 "the</span> (function word)", "u.s.</span> (not one token)",
                 "<b>planes</b> NNS: "):
        assert text in page, text
    # `duchkit inspect DIR --html` shows the same gallery
    assert "(filtered: POS NN→JJ)" in "".join(folder_galleries(tmp_path / "rules"))
    # a folder from before the column: the same gallery, without the candidates
    old = caption_gallery([_rule_folder(tmp_path / "old", with_candidates=False)])
    assert "<details" not in old and '<mark class="new">jets</mark>' in old
    assert "jets: GloVe 0.78, BERTScore 0.90" in old


def test_caption_gallery_reads_shards_with_and_without_candidates(tmp_path):
    """A folder whose shards differ (one written before the column): candidates where there."""
    import pyarrow.parquet as pq

    from duchkit.pipelines.store import StageStore

    root = _rule_folder(tmp_path / "rules", shard_rows=1)
    first = StageStore(root).shard_paths()[0]
    pq.write_table(pq.read_table(first).drop_columns(["candidates"]), first)
    assert "<details" not in caption_gallery([root])
    root = _rule_folder(tmp_path / "rules2", shard_rows=1)
    last = StageStore(root).shard_paths()[1]
    pq.write_table(pq.read_table(last).drop_columns(["candidates"]), last)
    assert "(chosen, F1 .90)" in caption_gallery([root])


def test_candidate_outcome_words():
    from duchkit.pipelines.galleries import candidate_outcome

    c = {"outcome": "below_bertscore", "bertscore_f1": 0.71, "old_tag": "NN", "tag": "NN"}
    assert candidate_outcome(c, 0.75) == "filtered: BERTScore .71 < .75"
    assert candidate_outcome(c) == "filtered: BERTScore .71 (below the threshold)"
    assert candidate_outcome({"outcome": "chosen", "bertscore_f1": 1.0}) == "chosen, F1 1.00"
    assert candidate_outcome({"outcome": "not_chosen", "bertscore_f1": -0.05}) == \
        "passed, F1 -.05, not chosen"
    assert candidate_outcome({"outcome": "something_new"}) == "something_new"


def test_view_gallery_shows_every_setup_per_image(folder):
    page = view_gallery([("ACC", folder / "views"), ("Random", folder / "random-views")])
    # one card per class (per_class=1), view 0 + 2 ACC views + 1 random view each
    assert page.count('class="card"') == 6
    assert page.count("<img") == 6 * 4 and page.count("data:image/jpeg;base64,") == 6 * 4
    first = page.index("data:image/jpeg;base64,") + len("data:image/jpeg;base64,")
    jpeg = base64.b64decode(page[first:page.index('"', first)])
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) > 1000  # a real picture, not a placeholder


def test_retrieval_gallery_top10_with_relevant_marked(folder):
    page = retrieval_gallery(folder / "run16", queries=3, k=10)
    assert "<h3>I→T</h3>" in page and "<h3>T→I</h3>" in page
    # 3 queries per direction: 10 of the 30 database captions each, all 6 database images
    assert page.count('class="hit rel"') + page.count('class="hit"') == 3 * 10 + 3 * 6
    assert page.count('class="hit rel"') >= 2 * 3
    assert '<span class="rank">1</span>' in page and "relevant</div>" in page
    assert retrieval_gallery(folder / "views") == ""  # not a run folder


def test_inspect_html_writes_one_page_with_every_gallery(folder, capsys):
    assert main(["inspect", str(folder), "--html"]) == 0
    assert f"galleries: {folder / 'inspect.html'}" in capsys.readouterr().out
    page = (folder / "inspect.html").read_text()
    for title in ("Captions and their variants", "Image views", "Retrieval"):
        assert f"<h2>{title}" in page
    assert "src=\"file:" not in page and "src=\"/" not in page  # self-contained
    other = folder / "elsewhere.html"
    assert main(["inspect", str(folder / "run16"), "--html", str(other)]) == 0
    assert "<h2>Retrieval" in other.read_text() and "Image views" not in other.read_text()


@needs_chromium
def test_chromium_shows_the_pictures(folder, tmp_path):
    page = folder / "inspect.html"
    page.write_text(render("# galleries\n", folder, "g", folder_galleries(folder)))
    shot = render_page(page, tmp_path, height=5000)
    # 24 view thumbnails; 3 image queries (I→T) and 3 x 6 image hits (T→I)
    assert shot["images"] == 6 * 4 + 3 + 3 * 6 and shot["broken"] == []
    # the thumbnails are pictures on the screenshot (each 96 px one holds several tiles)
    assert picture_blocks(shot["png"]) >= 40


@needs_chromium
def test_the_chromium_check_catches_broken_and_blank_images(tmp_path):
    blank = np.full((64, 64, 3), 255, np.uint8)
    from duchkit.pipelines.galleries import jpeg_uri

    page = tmp_path / "bad.html"
    page.write_text(render("# bad\n", tmp_path, "bad", [
        '<img alt="broken" src="data:image/jpeg;base64,AAAA">',
        f'<img class="thumb" alt="blank" src="{jpeg_uri(blank)}">']))
    shot = render_page(page, tmp_path / "shots")
    assert shot["images"] == 2 and shot["broken"] == ["broken"]
    assert picture_blocks(shot["png"]) == 0
