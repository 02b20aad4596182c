"""Where the real archives lie (UCM, RSITMD, Sydney captions) for tests and benchmarks.

$DUCHKIT_SHARED_DATA if set, else a `shared/data` folder beside some parent of `start` (the
layout of a workplace checkout and of CI's clone)."""
from __future__ import annotations

import os
from pathlib import Path


class SharedDataNotFound(RuntimeError):
    pass


def find_shared_data(start: Path | str | None = None) -> Path:
    env = os.environ.get("DUCHKIT_SHARED_DATA")
    if env:
        return Path(env)
    here = Path(start or Path.cwd()).resolve()
    for parent in (here, *here.parents):
        candidate = parent / "shared" / "data"
        if (candidate / "ucm" / "captions.json").is_file():
            return candidate
    raise SharedDataNotFound(f"real data not found beside {here} or its parents: set "
                             "DUCHKIT_SHARED_DATA to the shared/data folder")
