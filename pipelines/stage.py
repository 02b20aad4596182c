"""What a stage is: a pure function over Arrow tables plus a declared output schema.

A stage never opens files of other stages and never decides where its output goes: the runner
feeds it one input shard at a time and writes what it returns. That keeps every stage runnable
by any engine (the local process pool now, a distributed engine later) and makes a shard
recomputed alone identical to the same shard computed in a full run, provided the stage draws
its random numbers from `ctx.rng_for(sample_id)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa


@dataclass
class StageContext:
    """What the runner hands every stage call: run-wide settings, never data."""

    seed: int = 0
    device: str = "cpu"  # already resolved: "cpu" or "cuda"
    cache_dir: Path | None = None  # shared by all stages of one output folder
    stage_dir: Path | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("duchkit"))

    def rng_for(self, *key: object) -> np.random.Generator:
        """A generator seeded by (run seed, key...): same key, same draws, in any shard order."""
        digest = hashlib.sha256(repr((self.seed,) + key).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the section and field."""


def _matches(value: Any, annotation: str) -> bool:
    """Whether a config value fits a dataclass field's annotation (as written in the source:
    "int", "float | bool", "list[str]", "dict[str, str]", "Path | None", ...). A bool is not a
    number, an int is a float, and a form this does not know is accepted."""
    alternatives = [a.strip() for a in annotation.split("|")]
    for alt in alternatives:
        if alt == "None":
            ok = value is None
        elif alt == "bool":
            ok = isinstance(value, bool)
        elif alt == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif alt == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif alt == "str":
            ok = isinstance(value, str)
        elif alt == "Path":
            ok = isinstance(value, (str, Path))
        elif alt.startswith("list[") and alt.endswith("]"):
            ok = isinstance(value, list) and all(_matches(v, alt[5:-1]) for v in value)
        elif alt.startswith("dict[str, ") and alt.endswith("]"):
            ok = isinstance(value, dict) and all(isinstance(k, str) and _matches(v, alt[10:-1])
                                                 for k, v in value.items())
        else:
            return True
        if ok:
            return True
    return False


def type_problems(obj: Any) -> list[str]:
    """Fields of a dataclass instance whose value does not fit the annotation."""
    return [f"{f.name} = {getattr(obj, f.name)!r} is not {f.type}"
            for f in dataclasses.fields(obj)
            if not _matches(getattr(obj, f.name), str(f.type))]


@dataclass
class Stage:
    """Base class of every stage. Subclasses are dataclasses whose fields are the parameters.

    Subclasses set `kind` (the name used in pipeline configs) and implement `output_schema`
    and `process`. Model-backed stages load their models in `setup`, which the engine calls
    once per worker before the first shard.
    """

    kind: ClassVar[str] = ""
    # Columns a stage needs in its input; checked before any work starts.
    requires: ClassVar[tuple[str, ...]] = ()
    # A stage whose rows depend on other shards (an exact corpus-wide draw) sets this: the
    # runner then calls `plan` with every input shard before any shard runs, and folds all input
    # shards' checksums into the fingerprint, so a change anywhere recomputes every shard.
    whole_input: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """JSON-able parameters; part of the stage fingerprint, so a change invalidates output."""
        return dataclasses.asdict(self)

    def models(self) -> dict[str, str]:
        """Model ids and versions used, for the manifest (and the fingerprint)."""
        return {}

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        raise NotImplementedError

    def setup(self, ctx: StageContext) -> None:
        """Load models; called once per worker process before `process`."""

    def plan(self, input_paths: list[Path], ctx: StageContext) -> None:
        """Corpus-wide preparation of a `whole_input` stage, from all its input shards, in the
        runner's process before the engine starts: what it keeps on the stage travels to the
        workers with the stage (pickled), so every engine sees the same plan."""

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        raise NotImplementedError

    def summarise(self, shard_paths: list[Path]) -> dict[str, Any]:
        """Stage-specific counts for the manifest (e.g. rows per outcome), read from the
        stage's finished output shards; {} for none."""
        return {}

    def check_input(self, input_schema: pa.Schema, where: str) -> None:
        missing = [c for c in self.requires if c not in input_schema.names]
        if missing:
            raise ConfigError(
                f"stage '{self.kind}' needs input columns {missing}, which {where} does not have "
                f"(it has {input_schema.names})"
            )

    @classmethod
    def from_config(cls, values: dict[str, Any], where: str) -> "Stage":
        """Build the stage from a config table, naming unknown or ill-typed fields."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown} for stage '{cls.kind}'; "
                              f"known: {sorted(known)}")
        try:
            stage = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        problems = type_problems(stage)
        if problems:
            raise ConfigError(f"{where}: stage '{cls.kind}': " + "; ".join(problems))
        return stage
