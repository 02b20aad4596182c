"""benchmarks/transfer.py: the archives its settings cut, and the paired verdicts it reports."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def transfer():
    # transfer.py imports its sibling bench_results: give it that module, not a sys.path entry
    added = "bench_results" not in sys.modules
    if added:
        sys.modules["bench_results"] = _load("bench_results", BENCH / "bench_results.py")
    try:
        yield _load("transfer_bench", BENCH / "transfer.py")
    finally:
        if added:
            del sys.modules["bench_results"]


def test_class_disjoint_halves_and_stratified_shares(transfer):
    labels = np.repeat(np.arange(21), 100)  # UCM's shape: 21 classes x 100 images
    a = transfer.subset_rows(labels, transfer.SETTINGS["half-a"][2])
    b = transfer.subset_rows(labels, transfer.SETTINGS["half-b"][2])
    ca, cb = set(labels[a]), set(labels[b])
    assert not ca & cb and ca | cb == set(range(21))  # disjoint, together every class
    assert {len(ca), len(cb)} == {10, 11} and len(a) + len(b) == len(labels)
    third = transfer.subset_rows(labels, transfer.SETTINGS["size-33"][2])
    assert (np.bincount(labels[third], minlength=21) == 33).all()  # a third of each class
    assert (transfer.subset_rows(labels, None) == np.arange(len(labels))).all()
    # fixed, not per seed: every seed of a setting trains on the same archive
    assert (transfer.subset_rows(labels, ("size", 1 / 3)) == third).all()


def test_paired_differences_and_verdicts(transfer):
    def maps(values):
        return [{v: {d: x for d in transfer.DIRECTIONS} for v in transfer.VARIANTS}
                for x in values]

    theirs = maps([0.80, 0.70, 0.90])
    ahead = transfer.paired(maps([0.85, 0.76, 0.94]), theirs)  # +.05, +.06, +.04
    cell = ahead[transfer.VARIANTS[0]][transfer.DIRECTIONS[0]]
    assert cell["diff"] == pytest.approx(0.05) and cell["se"] == pytest.approx(0.0058, abs=1e-4)
    assert cell["verdict"] == "ahead" and cell["ahead"] == 3 and cell["seeds"] == 3
    behind = transfer.paired(maps([0.78, 0.67, 0.88]), theirs)
    assert behind[transfer.VARIANTS[0]][transfer.DIRECTIONS[0]]["verdict"] == "behind"
    # a mean within two standard errors of zero is level, whatever its sign
    level = transfer.paired(maps([0.83, 0.66, 0.91]), theirs)
    assert level[transfer.VARIANTS[0]][transfer.DIRECTIONS[0]]["verdict"] == "level"
    with pytest.raises(ValueError):  # unpaired seeds are refused, not silently truncated
        transfer.paired(maps([0.8, 0.7]), theirs)
