"""Pipeline configuration: a TOML or YAML file validated once, here, into typed values.

    [dataset]                      # where the data is (see readers.DatasetSpec)
    layout = "captions-json"
    captions = "data/ucm/captions.json"
    images = "data/ucm/images"
    filename_map = "data/ucm/filename_map.tsv"

    [run]
    seed = 0
    shard_rows = 10000

    [[stages]]                     # run in order; each reads the previous one unless `input`
    name = "clean"
    kind = "normalise-captions"
    lowercase = true

Relative paths are relative to the config file.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duchkit.pipelines.readers import DatasetError, DatasetSpec
from duchkit.pipelines.stage import ConfigError, Stage, type_problems

SOURCE_STAGE = "records"  # the reader's output, the input of the first stage


@dataclass
class StageEntry:
    name: str
    stage: Stage
    input: str


@dataclass
class RunSettings:
    out: Path | None = None  # None: ./duchkit-out in the current folder
    seed: int = 0
    shard_rows: int = 10_000
    device: str = "auto"
    workers: int = 1
    lenient: bool = False
    engine: str = "local"  # "local" (process pool) or "ray" (Ray Data; needs duchkit[ray])
    ray_address: str | None = None  # None: a local Ray instance (or $RAY_ADDRESS)


@dataclass
class PipelineConfig:
    dataset: DatasetSpec
    run: RunSettings
    stages: list[StageEntry] = field(default_factory=list)
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    # Sections later stages of the product read (train, evaluate, study), kept as data.
    extra: dict[str, Any] = field(default_factory=dict)


def read_config_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as exc:  # both parsers say line and column in their message
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of sections at the top level")
    return data


def _resolve(base: Path, value: Any) -> Any:
    if value is None or value == "":
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def build_config(data: dict[str, Any], base: Path, source: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> PipelineConfig:
    from duchkit.pipelines.stages import stage_class

    where = str(source or "config")
    known = {"dataset", "run", "stages", "train", "evaluate", "study"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; known: {sorted(known)}")
    for section in ("dataset", "run", "train", "evaluate", "study"):
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{where}: [{section}] must be a table of settings")
    stages_raw = data.get("stages") or []
    if not isinstance(stages_raw, list) or not all(isinstance(s, dict) for s in stages_raw):
        raise ConfigError(f"{where}: stages must be a list of tables: write [[stages]] (two "
                          "brackets) before each stage, not [stages]")
    ds = dict(data.get("dataset") or {})
    if "captions" not in ds:
        raise ConfigError(f"{where}: [dataset] needs 'captions' (a captions JSON file or a "
                          "precomp folder)")
    for key in ("captions", "images", "filename_map"):
        if key in ds:
            ds[key] = _resolve(base, ds[key])
    try:
        spec = DatasetSpec(**ds)
        problems = type_problems(spec)
        if problems:
            raise ConfigError(f"{where}: [dataset]: " + "; ".join(problems))
    except TypeError as exc:
        raise ConfigError(f"{where}: [dataset]: {exc}") from exc
    except DatasetError as exc:
        raise ConfigError(f"{where}: {exc}") from exc

    run_values = dict(data.get("run") or {})
    run_values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        run = RunSettings(**run_values)
    except TypeError as exc:
        raise ConfigError(f"{where}: [run]: {exc}") from exc
    problems = type_problems(run)
    if problems:
        raise ConfigError(f"{where}: [run]: " + "; ".join(problems))
    if run.out is None:
        run.out = Path("duchkit-out").resolve()
    elif "out" in (overrides or {}) and overrides["out"] is not None:
        run.out = Path(run.out).resolve()  # given on the command line: relative to the cwd
    else:
        run.out = _resolve(base, run.out)
    if run.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{where}: [run] device must be auto, cpu or cuda, not {run.device!r}")
    if run.engine not in ("local", "ray"):
        raise ConfigError(f"{where}: [run] engine must be local or ray, not {run.engine!r}")
    if not isinstance(run.shard_rows, int) or run.shard_rows < 1:
        raise ConfigError(f"{where}: [run] shard_rows must be a positive integer")

    entries: list[StageEntry] = []
    previous = SOURCE_STAGE
    names = {SOURCE_STAGE}
    for i, raw in enumerate(stages_raw):
        here = f"{where}: stages[{i}]"
        values = dict(raw)
        kind = values.pop("kind", None)
        name = values.pop("name", kind)
        if not kind:
            raise ConfigError(f"{here}: needs 'kind'")
        if name in names:
            raise ConfigError(f"{here}: stage name {name!r} is used twice")
        inp = values.pop("input", previous)
        if inp not in names:
            raise ConfigError(f"{here}: input {inp!r} is not an earlier stage "
                              f"(known: {sorted(names)})")
        stage = stage_class(kind, here).from_config(values, here)
        entries.append(StageEntry(name, stage, inp))
        names.add(name)
        previous = name
    extra = {k: data[k] for k in ("train", "evaluate", "study") if k in data}
    return PipelineConfig(spec, run, entries, source, data, extra)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    path = Path(path).resolve()
    return build_config(read_config_file(path), path.parent, path, overrides)


def demo_config_path() -> Path:
    """The embedded UCM demo's pipeline config (installed with the package)."""
    from importlib import resources

    return Path(str(resources.files("duchkit.pipelines") / "demo" / "demo.toml"))
