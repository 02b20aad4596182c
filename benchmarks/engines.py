"""Rows/s of one CPU stage: the local engine (one process, and a 2-process pool) vs Ray Data
with 2 workers, on the same real data, same config; checks the outputs are identical first.

    python benchmarks/engines.py [--quick] [--stage-kind KIND] [--param key=value ...]

Ray's start-up is timed separately (it is paid once per driver, not per stage).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from duchkit.pipelines.config import build_config
from duchkit.pipelines.runner import ingest, run_stage
from duchkit.pipelines.stage import StageContext
from duchkit.pipelines.store import StageStore
from bench_results import shared_data, write_result

REPO = Path(__file__).resolve().parents[1]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="UCM captions instead of UCM + RSITMD")
    ap.add_argument("--device", default="cpu", choices=["cpu"])
    ap.add_argument("--stage-kind", default="normalise-captions")
    ap.add_argument("--param", action="append", default=[], help="stage parameter key=value")
    ap.add_argument("--shard-rows", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data = shared_data()
    if args.quick:
        dataset = {"captions": str(data / "ucm" / "captions.json"),
                   "images": str(data / "ucm" / "images"),
                   "filename_map": str(data / "ucm" / "filename_map.tsv"), "name": "ucm"}
    else:
        dataset = {"captions": str(data / "rsitmd_captions"), "layout": "precomp",
                   "name": "rsitmd"}
    params = {k: _value(v) for k, v in (p.split("=", 1) for p in args.param)}
    tmp = Path(tempfile.mkdtemp(prefix="duchkit-engines-"))
    cfg = build_config({"dataset": dataset,
                        "run": {"out": str(tmp), "shard_rows": args.shard_rows, "lenient": True},
                        "stages": [{"name": "stage", "kind": args.stage_kind, **params}]},
                       base=tmp)
    ingest(cfg.dataset, tmp, args.shard_rows, lenient=True)
    rows = StageStore(tmp / "records").manifest()["rows"]
    ctx = StageContext(seed=0, device="cpu")
    entry = cfg.stages[0]

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_startup = time.perf_counter() - t0

    def timed(engine: str, workers: int) -> tuple[float, list[str]]:
        best = float("inf")
        for _ in range(args.repeat):
            StageStore(tmp / "stage").clear()
            start = time.perf_counter()
            m = run_stage(entry, tmp, ctx, workers=workers, engine=engine, progress=False)
            best = min(best, time.perf_counter() - start)
        return best, [s["sha256"] for s in m["shards"]]

    t_local1, h_local1 = timed("local", 1)
    t_local2, h_local2 = timed("local", 2)
    t_ray, h_ray = timed("ray", 2)
    ray.shutdown()
    assert h_local1 == h_local2 == h_ray, "engines disagree: shards differ"
    result = {"bench": "engines", "device": "cpu", "n": rows, "stage": args.stage_kind,
              "params": params, "shard_rows": args.shard_rows,
              "ours_per_s": round(rows / t_ray, 1), "baseline_per_s": round(rows / t_local1, 1),
              "ratio": round(t_local1 / t_ray, 3),
              "local_1_process_rows_per_s": round(rows / t_local1, 1),
              "local_2_processes_rows_per_s": round(rows / t_local2, 1),
              "ray_2_workers_rows_per_s": round(rows / t_ray, 1),
              "ray_startup_s": round(ray_startup, 2), "identical_shards": True,
              "note": "ours = Ray Data engine, 2 workers; baseline = local engine, 1 process"}
    suffix = "" if args.stage_kind == "normalise-captions" else f"-{args.stage_kind}"
    write_result(result, f"engines{suffix}-cpu.json")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
