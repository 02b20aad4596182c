"""The stage registry: config `kind` -> Stage class.

Built-in stages register here by name; any other stage can be named as "package.module:Class",
so users (and tests) plug in their own stages without touching duchkit.
"""
from __future__ import annotations

import importlib

from duchkit.pipelines.stage import ConfigError, Stage

# kind -> "module:Class", imported only when used so that a pipeline that never embeds images
# never imports torchvision.
BUILTIN = {
    "normalise-captions": "duchkit.pipelines.stages.normalise:NormaliseCaptions",
    "backtranslate": "duchkit.pipelines.stages.backtranslate:BackTranslate",
    "augment-images": "duchkit.pipelines.stages.augment_images:AugmentImages",
    "embed-images": "duchkit.pipelines.stages.embed:EmbedImages",
    "embed-texts": "duchkit.pipelines.stages.embed:EmbedTexts",
    "rule-augment": "duchkit.pipelines.stages.rule_augment:RuleAugment",
    "corrupt-captions": "duchkit.pipelines.stages.corrupt_captions:CorruptCaptions",
}


def _import(target: str, where: str) -> type[Stage]:
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import stage {target!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(f"{where}: {target!r} is not a duchkit Stage")
    return cls


def stage_class(kind: str, where: str = "config") -> type[Stage]:
    if kind in BUILTIN:
        return _import(BUILTIN[kind], where)
    if ":" in kind:
        return _import(kind, where)
    raise ConfigError(f"{where}: unknown stage kind {kind!r}; built-in kinds: {sorted(BUILTIN)} "
                      "(or give 'package.module:Class')")
