"""Progress within a shard: a stage that reports rows per batch (engines.report_rows) moves the
runner's bar between shards, in this process and from worker processes, with rows/s and an
ETA; a stage that does not report moves it once per shard, as before."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pytest

from duchkit.pipelines.config import build_config
from duchkit.pipelines.engines import LocalEngine, report_rows
from duchkit.pipelines.runner import run_pipeline
from duchkit.pipelines.stage import Stage


@dataclass
class BatchedStage(Stage):
    """Upper-cases captions `batch` rows at a time, reporting each batch as it is done."""

    kind: ClassVar[str] = "batched"
    requires: ClassVar[tuple[str, ...]] = ("caption",)
    batch: int = 10
    pause: float = 0.0

    def output_schema(self, input_schema):
        return input_schema.append(pa.field("upper", pa.string()))

    def process(self, table, ctx):
        out = []
        captions = table.column("caption").to_pylist()
        for i in range(0, len(captions), self.batch):
            out += [c.upper() for c in captions[i:i + self.batch]]
            time.sleep(self.pause)
            report_rows(len(captions[i:i + self.batch]))
        return table.append_column("upper", pa.array(out))


def _config(tmp_path, demo_subset, workers=1, pause=0.0, stage="tests.test_progress:BatchedStage"):
    return build_config({"dataset": demo_subset,
                         "run": {"out": str(tmp_path / "out"), "shard_rows": 30,
                                 "workers": workers},
                         "stages": [{"name": "upper", "kind": stage, "input": "records",
                                     "pause": pause}]}, base=tmp_path)


@pytest.fixture
def demo_subset(tmp_path, demo_dir):
    import json

    data = json.loads((demo_dir / "ucm" / "captions.json").read_text())
    data["images"] = data["images"][:12]  # 60 captions: two shards of 30
    (tmp_path / "captions.json").write_text(json.dumps(data))
    return {"captions": str(tmp_path / "captions.json"),
            "images": str(demo_dir / "ucm" / "images"),
            "filename_map": str(demo_dir / "ucm" / "filename_map.tsv"), "name": "p"}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_engine_passes_counts_within_each_shard(tmp_path, demo_subset, workers):
    from duchkit.pipelines.engines import ShardTask
    from duchkit.pipelines.stage import StageContext
    from duchkit.pipelines.store import StageStore

    out = tmp_path / "out"
    run_pipeline(_config(tmp_path, demo_subset), progress=False)
    records = StageStore(out / "records")
    tasks = [ShardTask(i, records.root / s["file"], s["sha256"], tmp_path / "again", "fp")
             for i, s in enumerate(records.manifest()["shards"])]
    StageStore(tmp_path / "again").prepare()
    seen: list[tuple[int, int]] = []
    engine = LocalEngine(workers, on_rows=lambda index, n: seen.append((index, n)))
    stage = BatchedStage()
    statuses = list(engine.map(stage, StageContext(), stage.output_schema(records.schema()),
                               tasks))
    assert sorted(s.rows for s in statuses) == [30, 30]
    # every shard reported its three batches of ten rows, whichever process ran it
    assert sorted(seen) == [(0, 10)] * 3 + [(1, 10)] * 3


def test_the_bar_moves_within_a_shard_with_rate_and_eta(tmp_path, demo_subset, capsys):
    config = _config(tmp_path, demo_subset, pause=0.15)
    run_pipeline(config, progress=True)
    err = capsys.readouterr().err
    # the bar shows counts between shard boundaries (10, 20 of the first 30 rows) and rows/s
    counts = {int(m) for m in re.findall(r"\| (\d+)/60 rows", err)}
    assert {10, 20, 40, 50} & counts, err[-1500:]
    assert "row/s" in err and "<" in err  # rate, and elapsed<remaining (the ETA)


def test_report_rows_outside_a_run_does_nothing():
    report_rows(5)  # no shard is running: no error, nothing to update


def test_in_blocks_visits_every_item_once_with_identical_texts_together_and_reports_all_rows():
    from duchkit.pipelines import engines

    seen: list[int] = []
    engines._PROGRESS[0] = (0, lambda index, n: seen.append(n))
    try:
        texts = [f"caption {i % 7}" for i in range(50)]
        blocks = list(engines.in_blocks(texts, rows=25, block=8))
    finally:
        engines._PROGRESS[0] = None
    flat = [i for b in blocks for i in b]
    assert sorted(flat) == list(range(50))
    assert [texts[i] for i in flat] == sorted(texts)  # duplicates adjacent
    assert len(seen) == len(blocks) == 7 and sum(seen) == 25  # every row, in seven steps


def test_embed_texts_moves_the_bar_within_a_shard(tiny_bert_dir):
    from duchkit.pipelines import engines
    from duchkit.pipelines.stage import StageContext
    from duchkit.pipelines.stages.embed import EmbedTexts

    words = "plane planes parked airport storage tanks road green trees river buildings".split()
    captions = [f"{a} {b} near {c}" for a in words for b in words[:4] for c in words[:2]]
    table = pa.table({"caption_id": [str(i) for i in range(len(captions))],
                      "caption": captions})
    stage = EmbedTexts(model=str(tiny_bert_dir), pooling="mean", batch_size=2)
    seen: list[int] = []
    engines._PROGRESS[0] = (0, lambda index, n: seen.append(n))
    try:
        out = stage.process(table, StageContext())
    finally:
        engines._PROGRESS[0] = None
    assert out.num_rows == len(captions) == 88
    assert len(seen) == 3 and sum(seen) == 88  # blocks of 16 batches of 2: 32 + 32 + 24 texts
