"""The dependency floors in setup.cfg are true: each API the code uses exists at the floor.

A table of (package, what the code calls, the first release that has it); the test finds the
call in the code and fails when setup.cfg's floor is older than that release, so a new use of a
newer API must raise the floor in the same change. `tox -e oldest` runs the suite at the floors
of the light dependencies."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]

# package, a regex of the call in the code, the first release that has it, why
API_FLOORS = [
    ("numpy", r"np\.bitwise_count\(", "2.0", "popcount of the Hamming distances"),
    ("torch", r"fused=True", "2.4", "fused Adam on the CPU"),
    ("torch", r"torch\.load\([^)]*weights_only=True", "1.13", "safe checkpoint loading"),
    ("torch", r"torch\.compile\(", "2.0", "--compile"),
    ("pandas", r"import pandas|pd\.", "2.2.2", "the first pandas built for NumPy 2"),
    ("pyarrow", r"import pyarrow", "16", "the first pyarrow built for NumPy 2"),
    ("numba", r"import numba|from numba", "0.60", "the first numba for NumPy 2"),
    ("albumentations", r"import albumentations", "2.0", "apply(img, **params) replays views"),
]


def floors() -> dict[str, Version]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    out = {}
    for line in cfg["options"]["install_requires"].splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if lows:
            out[req.name.lower()] = max(lows)
    return out


def code_text() -> str:
    return "\n".join(p.read_text() for folder in ("augment", "hashing", "pipelines")
                     for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("package, pattern, first, why", API_FLOORS,
                         ids=[f"{p}-{w}" for p, _, _, w in API_FLOORS])
def test_floor_has_the_api(package, pattern, first, why):
    if not re.search(pattern, code_text()):
        pytest.fail(f"{pattern!r} no longer appears in the code: drop or update this row")
    floor = floors().get(package)
    assert floor is not None, f"{package} is used ({why}) but setup.cfg sets no floor"
    assert floor >= Version(first), (f"{package}>={floor} in setup.cfg, but {why} needs "
                                     f"{package} {first}")


def test_installed_versions_meet_the_floors():
    from importlib.metadata import version

    for name, floor in floors().items():
        try:
            installed = Version(version(name))
        except Exception:  # a distribution name that imports under another name is fine
            continue
        assert installed >= floor, f"{name} {installed} is below the floor {floor}"
