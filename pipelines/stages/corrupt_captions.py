"""Stage `corrupt-captions`: noisy caption corpora, for robustness tests of the whole pipeline.

    [[stages]]
    name = "noisy"
    kind = "corrupt-captions"
    rates = { replaced-caption = 0.2, missing-char = 0.05, removed-token = 0.05 }
    unit = "image"              # image (default) | caption: what a rate is a share of
    replace_mode = "cross-class"  # cross-class (needs labels) | shuffle
    edits_per_row = 1           # character/token kinds: words edited per caption
    splits = ["train"]          # the splits corrupted; the others pass through untouched

Kinds: `replaced-caption` (the caption of another image) and the text kinds of
augment/caption_noise.py (missing-, swapped-, duplicated-, replaced-char; removed-token).

Exact and seeded, as the trainer's noise (hashing/noise.py): of the N units (images, or caption
rows with unit = "caption") in `splits`, exactly round(rate x N) get each kind, and no unit gets
two kinds. The units are ranked by a hash of (seed, unit id) and the kinds take consecutive
blocks of that ranking, so the draw depends on the ids and the seed only: not on the order of
the rows, on how they are sharded, or on the engine. A per-row coin flip could not be exact, and
a shard alone does not know N nor hold a donor's captions, so the stage is `whole_input`: the
runner hands it every input shard in `plan` before any shard runs (the plan travels to the
workers with the stage), and a change in any input shard recomputes them all.

unit = "image" (the default) corrupts all captions of a chosen image with its kind, as CHNR's
protocol does for wrong captions: no caption of a noisy image still describes it, so a model
cannot recover the pair from a sibling caption. A replaced image takes the captions of one donor
image, caption k from the donor's caption k (mod the donor's count). unit = "caption" draws
caption rows instead, and each replaced row takes one caption of its own donor.

Donors: `cross-class` draws an image of another class (every image in `splits` needs a label);
`shuffle` draws any other image. Donors come from `splits` and give their original caption, so
with the default splits = ["train"] no caption crosses into evaluation. (The trainer's shuffle
permutes captions among the chosen images; here any other image can give, as for cross-class.)

Columns: `caption` is overwritten with the corrupted caption so later stages read it unchanged;
`caption_clean` keeps the original; `noise_kind` ("none" for untouched rows), `noise_count`
(edits made: 1 for a replaced caption, fewer than `edits_per_row` when a caption has too few
eligible words), and for a replaced caption `noise_source_image_id` / `noise_source_caption_id`.
Character/token edits draw from `ctx.rng_for(kind, caption_id)`.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from duchkit.augment.caption_noise import TEXT_KINDS, corrupt_text
from duchkit.pipelines.schema import SPLITS
from duchkit.pipelines.stage import ConfigError, Stage, StageContext

REPLACED = "replaced-caption"
KINDS = (REPLACED,) + TEXT_KINDS  # also the order in which kinds take their blocks
UNITS = ("image", "caption")
REPLACE_MODES = ("cross-class", "shuffle")
NOISE_FIELDS = [
    pa.field("caption_clean", pa.string(), nullable=False),
    pa.field("noise_kind", pa.string(), nullable=False),
    pa.field("noise_count", pa.int32(), nullable=False),
    pa.field("noise_source_image_id", pa.string()),
    pa.field("noise_source_caption_id", pa.string()),
]


class Assignment(NamedTuple):
    """What the plan says for one caption row (rows not in the plan stay as they are)."""

    kind: str
    source_image_id: str | None = None
    source_caption_id: str | None = None
    source_caption: str | None = None


UNTOUCHED = Assignment("none")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class CorruptCaptions(Stage):
    kind: ClassVar[str] = "corrupt-captions"
    requires: ClassVar[tuple[str, ...]] = ("image_id", "caption_id", "caption_index", "split",
                                           "caption")
    whole_input: ClassVar[bool] = True

    rates: dict[str, float] = field(default_factory=dict)  # kind -> share of the units
    unit: str = "image"
    replace_mode: str = "cross-class"
    edits_per_row: int = 1
    splits: list[str] = field(default_factory=lambda: ["train"])

    def __post_init__(self) -> None:
        if not isinstance(self.rates, dict):
            raise ConfigError(f"field 'rates' must be a table of kind = rate, not {self.rates!r}")
        unknown = sorted(set(self.rates) - set(KINDS))
        if unknown:
            raise ConfigError(f"field 'rates': unknown noise kind(s) {unknown}; known: "
                              f"{list(KINDS)}")
        for kind, rate in self.rates.items():
            if not _number(rate) or not 0 <= rate <= 1:
                raise ConfigError(f"field 'rates': {kind} = {rate!r} must be a share in [0, 1]")
        total = sum(self.rates.values())
        if total > 1 + 1e-9:
            raise ConfigError(f"field 'rates': the rates sum to {total:g} > 1 (a unit gets one "
                              "kind at most)")
        self.rates = {k: float(v) for k, v in self.rates.items()}
        if self.unit not in UNITS:
            raise ConfigError(f"field 'unit' must be one of {list(UNITS)}, not {self.unit!r}")
        if self.replace_mode not in REPLACE_MODES:
            raise ConfigError(f"field 'replace_mode' must be one of {list(REPLACE_MODES)}, not "
                              f"{self.replace_mode!r}")
        if not isinstance(self.edits_per_row, int) or isinstance(self.edits_per_row, bool) \
                or self.edits_per_row < 1:
            raise ConfigError(f"field 'edits_per_row' must be a positive integer, not "
                              f"{self.edits_per_row!r}")
        if not isinstance(self.splits, list) or not self.splits \
                or any(s not in SPLITS for s in self.splits):
            raise ConfigError(f"field 'splits' must be a non-empty list of {list(SPLITS)}, not "
                              f"{self.splits!r}")
        self._plan: dict[str, Assignment] | None = None

    def _cross_class(self) -> bool:
        return self.rates.get(REPLACED, 0) > 0 and self.replace_mode == "cross-class"

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        clash = [f.name for f in NOISE_FIELDS if f.name in input_schema.names]
        if clash:
            raise ConfigError(f"stage '{self.kind}': its input already has column(s) {clash}; "
                              "give it records (or normalised captions) that are not corrupted")
        if self._cross_class() and "label" not in input_schema.names:
            raise ConfigError("field 'replace_mode': cross-class needs class labels and the "
                              "input has no 'label' column; use replace_mode = \"shuffle\"")
        schema = input_schema
        for f in NOISE_FIELDS:
            schema = schema.append(f)
        return schema

    # ------------------------------------------------------------------ the corpus-wide draw
    def plan(self, input_paths: list[Path], ctx: StageContext) -> None:
        cols = [c for c in self.requires + ("label",) if c in pq.read_schema(input_paths[0]).names]
        table = pa.concat_tables([pq.read_table(p, columns=cols) for p in input_paths])
        self._plan = self.make_plan(table, ctx)

    def make_plan(self, table: pa.Table, ctx: StageContext) -> dict[str, Assignment]:
        """caption_id -> Assignment for every row to corrupt, drawn over the whole `table`."""
        col = {c: table.column(c).to_pylist() for c in table.column_names}
        ids = col["caption_id"]
        if len(set(ids)) != len(ids):
            dup = next(c for c, n in Counter(ids).items() if n > 1)
            raise ConfigError(f"stage '{self.kind}' needs one row per caption (records or "
                              f"normalised captions); caption_id {dup!r} is there twice")
        rows = [r for r, s in enumerate(col["split"]) if s in self.splits]
        unit_of = col["image_id"] if self.unit == "image" else ids
        units = sorted({unit_of[r] for r in rows})
        counts = {k: round(self.rates.get(k, 0) * len(units)) for k in KINDS}
        if sum(counts.values()) > len(units):
            raise ConfigError(f"field 'rates': round(rate x {len(units)} {self.unit}s) per kind "
                              f"gives {sum(counts.values())} > {len(units)}; lower a rate")
        ranked = sorted(units, key=lambda u: (self._rank(ctx.seed, u), u))
        kind_of: dict[str, str] = {}
        start = 0
        for kind in KINDS:
            kind_of.update((u, kind) for u in ranked[start:start + counts[kind]])
            start += counts[kind]
        replaced = [u for u, kind in kind_of.items() if kind == REPLACED]
        donors = self._donors(col, rows, replaced, ctx) if replaced else {}

        # each image's captions in caption_index order: what a donor gives, position by position
        captions: dict[str, list[int]] = {}
        for r in sorted(rows, key=lambda r: (col["image_id"][r], col["caption_index"][r], ids[r])):
            captions.setdefault(col["image_id"][r], []).append(r)
        position = {r: k for rs in captions.values() for k, r in enumerate(rs)}
        plan: dict[str, Assignment] = {}
        for r in rows:
            kind = kind_of.get(unit_of[r])
            if kind is None:
                continue
            if kind != REPLACED:
                plan[ids[r]] = Assignment(kind)
                continue
            donor, pick = donors[unit_of[r]]
            given = captions[donor]
            d = given[(position[r] if pick is None else pick) % len(given)]
            plan[ids[r]] = Assignment(kind, donor, ids[d], col["caption"][d] or "")
        return plan

    @staticmethod
    def _rank(seed: int, unit: str) -> bytes:
        return hashlib.sha256(repr((seed, "corrupt-captions", unit)).encode()).digest()

    def _donors(self, col: dict[str, list], rows: list[int], replaced: list[str],
                ctx: StageContext) -> dict[str, tuple[str, int | None]]:
        """unit -> (donor image, which of its captions: None = the same position), from
        ctx.rng_for(unit): a donor does not depend on which other units were drawn."""
        labels = col.get("label") or [None] * len(col["split"])
        label_of = {col["image_id"][r]: labels[r] for r in rows}
        if self.replace_mode == "cross-class":
            unlabelled = sorted(i for i, lab in label_of.items() if not lab)
            if unlabelled:
                raise ConfigError(
                    f"field 'replace_mode': cross-class needs a class label for every image in "
                    f"splits {self.splits}; {len(unlabelled)} have none (e.g. "
                    f"{unlabelled[0]!r}); use replace_mode = \"shuffle\"")
            if len(set(label_of.values())) < 2:
                raise ConfigError("field 'replace_mode': cross-class needs images of two classes "
                                  f"or more in splits {self.splits}")
        elif len(label_of) < 2:
            raise ConfigError(f"field 'replace_mode': shuffle needs two images or more in splits "
                              f"{self.splits}")
        # images sorted by (class, id) in shuffle mode too, where the "class" is the image itself:
        # the images a unit may not take from are then one block [lo, hi), skipped in O(1)
        group = (lambda i: label_of[i]) if self.replace_mode == "cross-class" else (lambda i: i)
        images = sorted(label_of, key=lambda i: (group(i), i))
        block: dict[Any, tuple[int, int]] = {}
        for k, i in enumerate(images):
            lo, _ = block.get(group(i), (k, k))
            block[group(i)] = (lo, k + 1)
        image_of = dict(zip(col["caption_id"], col["image_id"]))
        n_captions = Counter(col["image_id"][r] for r in rows)
        out = {}
        for u in replaced:
            rng = ctx.rng_for("corrupt-captions", "donor", u)
            lo, hi = block[group(u if self.unit == "image" else image_of[u])]
            k = int(rng.integers(len(images) - (hi - lo)))
            donor = images[k + (hi - lo) if k >= lo else k]
            pick = None if self.unit == "image" else int(rng.integers(n_captions[donor]))
            out[u] = (donor, pick)
        return out

    # ------------------------------------------------------------------ per shard
    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        # planned by the runner over the whole input; called by hand, the table is the corpus
        plan = self._plan if self._plan is not None else self.make_plan(table, ctx)
        clean = [c or "" for c in table.column("caption").to_pylist()]
        ids = table.column("caption_id").to_pylist()
        texts, kinds, counts, src_image, src_caption = [], [], [], [], []
        for cid, text in zip(ids, clean):
            a = plan.get(cid, UNTOUCHED)
            if a.kind == REPLACED:
                text, n = a.source_caption, 1
            elif a.kind != "none":
                text, n = corrupt_text(text, a.kind, self.edits_per_row,
                                       ctx.rng_for("corrupt-captions", a.kind, cid))
            else:
                n = 0
            texts.append(text)
            kinds.append(a.kind)
            counts.append(n)
            src_image.append(a.source_image_id)
            src_caption.append(a.source_caption_id)
        i = table.column_names.index("caption")
        out = table.set_column(i, table.schema.field(i), pa.array(texts, pa.string()))
        for f, values in zip(NOISE_FIELDS, (clean, kinds, counts, src_image, src_caption)):
            out = out.append_column(f, pa.array(values, f.type))
        return out

    def summarise(self, shard_paths: list[Path]) -> dict[str, Any]:
        """Rows and images per kind, and rows drawn for a text kind that had nothing to edit."""
        cols = ["image_id", "noise_kind", "noise_count"]
        table = pa.concat_tables([pq.read_table(p, columns=cols) for p in shard_paths])
        kinds = table.column("noise_kind").to_pylist()
        images = zip(kinds, table.column("image_id").to_pylist())
        unedited = sum(k != "none" and n == 0
                       for k, n in zip(kinds, table.column("noise_count").to_pylist()))
        return {"unit": self.unit, "rows": dict(sorted(Counter(kinds).items())),
                "images": dict(sorted(Counter(k for k, _ in set(images)).items())),
                "unedited": unedited}
