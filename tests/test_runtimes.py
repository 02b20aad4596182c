"""Encoder runtimes (pipelines.runtimes): the ONNX export of image and text encoders run by
onnxruntime and OpenVINO gives torch's embeddings, is cached, and is a stage parameter that
changes the fingerprint only when it is not torch. Small models built here; the real
EfficientNet-Lite0 / MiniLM comparison is benchmarks/runtimes.py."""
from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest
import torch

from duchkit.pipelines import runtimes
from duchkit.pipelines.encoders import load_image_encoder, load_text_encoder
from duchkit.pipelines.runtimes import (RUNTIMES, check_runtime, wrap_image_encoder,
                                        wrap_text_encoder)
from duchkit.pipelines.stage import ConfigError, StageContext
from duchkit.pipelines.stages.embed import EmbedImages, EmbedTexts

AVAILABLE = [r for r in RUNTIMES[1:] if importlib.util.find_spec(r) and
             importlib.util.find_spec("onnx")]
needs_runtime = pytest.mark.skipif(not AVAILABLE, reason="pip install 'duchkit[onnxruntime]' "
                                   "or 'duchkit[openvino]'")


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DUCHKIT_CACHE", str(tmp_path_factory.getbasetemp() / "duchkit-cache"))


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pt"
    torch.save({"arch": "resnet18",
                "state_dict": torchvision.models.resnet18(weights=None).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir):
    return tiny_bert_dir


# ---------------------------------------------------------------- checks (no runtime needed)

def test_runtime_names_devices_and_precisions_are_checked():
    check_runtime("torch", "cuda", "fp16")  # torch runs anywhere
    with pytest.raises(ConfigError, match="runtime must be one of"):
        check_runtime("tensorrt")
    with pytest.raises(ConfigError, match="CPU only.*cuda"):
        check_runtime("openvino", "cuda")
    with pytest.raises(ConfigError, match="bf16"):
        check_runtime("onnxruntime", "cpu", "bf16")
    with pytest.raises(ConfigError, match="runtime must be one of"):
        EmbedImages(runtime="tvm")
    with pytest.raises(ConfigError, match="bf16"):
        EmbedTexts(runtime="onnxruntime", precision="bf16")


def test_a_missing_runtime_package_names_its_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'duchkit\[openvino\]'"):
        EmbedImages(runtime="openvino")


def test_runtime_torch_keeps_old_fingerprints_and_any_other_is_part_of_them():
    assert "runtime" not in EmbedImages().params() and "runtime" not in EmbedTexts().params()
    # built from a manifest written before the parameter existed: the same stage
    assert EmbedTexts.from_config(EmbedTexts().params(), "m").params() == EmbedTexts().params()
    for other in AVAILABLE:
        stage = EmbedTexts(runtime=other)
        assert stage.params()["runtime"] == other
        assert EmbedTexts.from_config(stage.params(), "m").params() == stage.params()


# ---------------------------------------------------------------- the runtimes themselves

@needs_runtime
@pytest.mark.parametrize("runtime", AVAILABLE)
def test_image_export_matches_torch_any_batch_and_is_cached(runtime, resnet_ckpt, monkeypatch):
    enc = load_image_encoder(str(resnet_ckpt), input_size=64)
    fast = wrap_image_encoder(enc, runtime)
    assert fast.onnx_path.is_file() and fast.dim == enc.dim == 512
    assert (fast.arch, fast.weights, fast.input_size) == (enc.arch, enc.weights, 64)
    x = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    want = enc.encode(x)
    for n in (1, 2, 5):  # a dynamic batch axis: any batch size, the same rows
        got = fast.encode(x[:n])
        assert got.dtype == np.float32 and got.shape == (n, 512)
        np.testing.assert_allclose(got, want[:n], rtol=1e-3, atol=1e-4)
    assert fast.encode(x.numpy()).shape == (5, 512)  # numpy arrays too
    # a second load finds the export on disk and does not export again
    monkeypatch.setattr(runtimes, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    again = wrap_image_encoder(load_image_encoder(str(resnet_ckpt), input_size=64), runtime)
    assert again.onnx_path == fast.onnx_path
    # other weights, another file
    other = load_image_encoder(str(resnet_ckpt), input_size=64)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    monkeypatch.undo()
    assert wrap_image_encoder(other, runtime).onnx_path != fast.onnx_path


@needs_runtime
@pytest.mark.parametrize("runtime", AVAILABLE)
@pytest.mark.parametrize("pooling", ["sum4-mean", "mean", "cls"])
def test_text_export_matches_torch_with_padding_and_alone(runtime, pooling, bert_dir):
    enc = load_text_encoder(str(bert_dir), pooling)
    fast = wrap_text_encoder(enc, runtime)
    texts = ["a plane", "many storage tanks are near the road and two green trees",
             "two planes are parked at the airport", "river", "green trees near buildings"]
    want = enc.encode(texts, batch_size=2)
    got = fast.encode(texts, batch_size=2)  # padded batches of two, length-sorted
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fast.encode(texts[:1]), want[:1], rtol=1e-3, atol=1e-4)  # alone
    assert fast.encode([]).shape == (0, 32)
    assert fast.over_length(texts).tolist() == enc.over_length(texts).tolist()


@needs_runtime
def test_openvino_bf16_stays_close(resnet_ckpt, bert_dir):
    if "openvino" not in AVAILABLE:
        pytest.skip("openvino not installed")
    enc = load_text_encoder(str(bert_dir), "sum4-mean")
    fast = wrap_text_encoder(enc, "openvino")
    texts = ["a plane", "many storage tanks are near the road", "two green trees"]
    assert _cos(fast.encode(texts, precision="bf16"), enc.encode(texts)).min() > 0.99


@needs_runtime
def test_runtime_encoders_refuse_cuda(resnet_ckpt):
    fast = wrap_image_encoder(load_image_encoder(str(resnet_ckpt), input_size=32), AVAILABLE[0])
    with pytest.raises(ConfigError, match="CPU only"):
        fast.to("cuda")
    with pytest.raises(ConfigError, match="CPU only"):
        fast.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "cuda")
    stage = EmbedImages(model=str(resnet_ckpt), input_size=32, runtime=AVAILABLE[0],
                        encoder_procs=1)
    with pytest.raises(ConfigError, match="CPU only"):
        stage.setup(StageContext(device="cuda"))


@needs_runtime
def test_embed_texts_stage_with_a_runtime_writes_torchs_embeddings(bert_dir):
    runtime = AVAILABLE[0]
    table = pa.table({"caption": ["A plane.", "Many storage tanks, near the road!", "a plane"]})
    ctx = StageContext()
    out = {}
    for rt in ("torch", runtime):
        stage = EmbedTexts(model=str(bert_dir), runtime=rt)
        stage.setup(ctx)
        out[rt] = stage.process(table, ctx)
        field = stage.output_schema(table.schema).field("caption_embedding")
        assert (field.metadata.get(b"runtime") == runtime.encode()) == (rt != "torch")
    a, b = (np.array(out[k].column("caption_embedding").to_pylist()) for k in out)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_cli_embed_runtime_option_is_checked_before_any_work(tmp_path, capsys):
    from duchkit.pipelines.cli import main

    out = tmp_path / "out"
    assert main(["embed", "texts", "--out", str(out), "--runtime", "onnxruntime",
                 "--precision", "bf16", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bf16" in err and "Traceback" not in err and not out.exists()
