"""A deliberately slow, seeded stage for the crash-resume test (named in configs as
`tests.slow_stage:SlowSeededStage`, which also exercises plug-in stages)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from duchkit.pipelines.stage import Stage, StageContext


@dataclass
class SlowSeededStage(Stage):
    kind: ClassVar[str] = "slow-seeded"
    requires: ClassVar[tuple[str, ...]] = ("caption_id", "caption")

    seconds_per_shard: float = 0.5

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema.append(pa.field("shuffled", pa.string())).append(
            pa.field("draw", pa.float64()))

    def process(self, table: pa.Table, ctx: StageContext) -> pa.Table:
        time.sleep(self.seconds_per_shard)
        shuffled, draws = [], []
        for cid, cap in zip(table.column("caption_id").to_pylist(),
                            table.column("caption").to_pylist()):
            rng = ctx.rng_for(cid)
            words = cap.split()
            shuffled.append(" ".join(words[i] for i in rng.permutation(len(words))))
            draws.append(float(rng.random()))
        return table.append_column("shuffled", pa.array(shuffled)).append_column(
            "draw", pa.array(draws))
