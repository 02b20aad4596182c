"""Caption normalisation and tokenisation: the first text stage of most pipelines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from duchkit.augment.caption_text import normalise, tokenize
from duchkit.pipelines.stage import Stage, StageContext


@dataclass
class NormaliseCaptions(Stage):
    """Adds `text` (the normalised caption), `tokens` and `n_tokens`; keeps `caption` as read."""

    kind: ClassVar[str] = "normalise-captions"
    requires: ClassVar[tuple[str, ...]] = ("caption_id", "caption")

    lowercase: bool = False
    strip_punctuation: bool = False
    fix_spacing: bool = True

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return (input_schema.append(pa.field("text", pa.string(), nullable=False))
                .append(pa.field("tokens", pa.list_(pa.string())))
                .append(pa.field("n_tokens", pa.int32())))

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        texts = [normalise(c, self.lowercase, self.strip_punctuation, self.fix_spacing)
                 for c in table.column("caption").to_pylist()]
        tokens = [tokenize(t) for t in texts]
        return (table.append_column("text", pa.array(texts, pa.string()))
                .append_column("tokens", pa.array(tokens, pa.list_(pa.string())))
                .append_column("n_tokens", pa.array([len(t) for t in tokens], pa.int32())))
