"""The Ray Data engine on a real local Ray instance gives the local engine's shards."""
from __future__ import annotations

import json
import sys

import pytest

from duchkit.pipelines.cli import main
from duchkit.pipelines.runner import run_pipeline
from duchkit.pipelines.store import StageStore
from tests.test_store_runner import sorted_rows, ucm_config


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _with_engine(cfg, engine):
    cfg.run.engine = engine
    cfg.run.workers = 2
    return cfg


def _run_demo(out, *options):
    """`duchkit run` into `out`; a failure shows the errors of its logs, not just the code."""
    rc = main(["run", "--out", str(out), *options, "--quiet"])
    if rc:
        logs = "\n".join(f"--- {log}\n" + "\n".join(log.read_text().splitlines()[-60:])
                         for log in sorted(out.rglob("duchkit.log")))
        pytest.fail(f"duchkit run {' '.join(options)} exited {rc}:\n{logs}"[-12000:])


def test_demo_on_ray_equals_local(ray_cluster, tmp_path):
    _run_demo(tmp_path / "ray", "--engine", "ray")
    _run_demo(tmp_path / "local")
    for stage in ("records", "captions"):
        r = json.loads((tmp_path / "ray" / stage / "_manifest.json").read_text())
        loc = json.loads((tmp_path / "local" / stage / "_manifest.json").read_text())
        assert [s["sha256"] for s in r["shards"]] == [s["sha256"] for s in loc["shards"]]
    assert json.loads((tmp_path / "ray" / "captions" / "_manifest.json").read_text())[
        "engine"] == "ray"


def test_full_ucm_text_stage_on_ray_equals_local_and_resumes(ray_cluster, tmp_path, shared_data):
    stages = [{"name": "clean", "kind": "normalise-captions", "lowercase": True},
              {"name": "stripped", "kind": "duchkit.pipelines.stages.normalise:NormaliseCaptions",
               "input": "records", "strip_punctuation": True}]
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    m = run_pipeline(_with_engine(ucm_config(shared_data, ray_out, stages, 1500), "ray"),
                     progress=False)
    run_pipeline(_with_engine(ucm_config(shared_data, local_out, stages, 1500), "local"),
                 progress=False)
    assert m["clean"]["rows"] == 10_500 and len(m["clean"]["shards"]) == 7
    for stage in ("clean", "stripped"):
        assert sorted_rows(ray_out, stage) == sorted_rows(local_out, stage)

    # Resume: drop two shards' output; Ray recomputes exactly those.
    for i in (1, 5):
        StageStore(ray_out / "clean").shard_path(i).unlink()
    m2 = run_pipeline(_with_engine(ucm_config(shared_data, ray_out, stages, 1500), "ray"),
                      progress=False)
    assert m2["clean"]["shards_computed"] == 2 and m2["clean"]["shards_reused"] == 5
    assert m2["stripped"]["shards_computed"] == 0
    assert sorted_rows(ray_out, "clean") == sorted_rows(local_out, "clean")


def test_full_ucm_image_stage_on_ray_equals_local(ray_cluster, tmp_path, shared_data):
    stages = [{"name": "views", "kind": "augment-images", "augmentation": "RandomAugmentation",
               "views": 2}]
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    m = run_pipeline(_with_engine(ucm_config(shared_data, ray_out, stages, 2500), "ray"),
                     progress=False)
    run_pipeline(_with_engine(ucm_config(shared_data, local_out, stages, 2500), "local"),
                 progress=False)
    assert m["views"]["rows"] == 2_100 * 3 and m["views"]["engine"] == "ray"
    key = lambda r: (r["image_id"], r["view_index"])  # noqa: E731
    ray_rows = sorted(StageStore(ray_out / "views").read_all().to_pylist(), key=key)
    local_rows = sorted(StageStore(local_out / "views").read_all().to_pylist(), key=key)
    assert ray_rows == local_rows


def test_without_ray_the_engine_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["run", "--out", str(tmp_path / "x"), "--engine", "ray", "--quiet"]) == 2
    assert "pip install 'duchkit[ray]'" in capsys.readouterr().err
