"""Rows/s of one CPU stage: the local engine (one process, and a 2-process pool) vs Ray Data
with 2 workers, on the same real data, same config; checks the outputs are identical first.

    python benchmarks/engines.py [--quick] [--stage-kind KIND] [--param key=value ...]

Ray's start-up is timed separately (it is paid once per driver, not per stage).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.config import build_config  # noqa: E402
from pipelines.runner import ingest, run_stage  # noqa: E402
from pipelines.stage import StageContext  # noqa: E402
from pipelines.store import StageStore  # noqa: E402
from tests.conftest import find_shared_data  # noqa: E402


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
    data = find_shared_data()
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
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.stage_kind == "normalise-captions" else f"-{args.stage_kind}"
    (out / f"engines{suffix}-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
