"""The layout holds: one installed namespace, and imports that flow one way.

augment/, pipelines/ and hashing/ install as duchkit.augment, duchkit.pipelines and
duchkit.hashing (the bare names belong to other PyPI distributions). augment/ and hashing/ are
libraries of their own: they never import pipelines/ nor each other. Benchmarks never import
tests/, and nothing edits sys.path to find the code."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("augment", "hashing", "pipelines")
# what each top-level folder may import of the project (besides itself)
ALLOWED = {"augment": set(), "hashing": set(), "pipelines": {"augment", "hashing"},
           "benchmarks": {"augment", "hashing", "pipelines"},
           "tests": {"augment", "hashing", "pipelines", "tests"}}


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def project_part(module: str) -> str | None:
    """'augment' for duchkit.augment.x; 'BARE:augment' for a bare `augment.x` import."""
    parts = module.split(".")
    if parts[0] == "duchkit":
        return parts[1] if len(parts) > 1 else "duchkit"
    if parts[0] in PACKAGES:
        return "BARE:" + parts[0]
    if parts[0] == "tests":
        return "tests"
    return None


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_flow_one_way(folder):
    bad = []
    for path in python_files(folder):
        for line, module in imported_modules(path):
            part = project_part(module)
            if part is None or part == folder:
                continue
            if part.startswith("BARE:") or part not in ALLOWED[folder]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_nothing_edits_sys_path():
    edits = ("sys.path." + "insert", "sys.path." + "append")  # spelt so this file passes
    bad = [f"{p.relative_to(REPO)}:{n}" for folder in ALLOWED for p in python_files(folder)
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if any(e in line for e in edits)]
    assert not bad, bad


def test_wheel_holds_only_the_duchkit_namespace(tmp_path):
    # from a copy of the sources: a build/ folder left in a checkout would leak into the wheel
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in PACKAGES:
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("duchkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"duchkit"}, tops
    # every package folder of the repository is in the wheel (setup.cfg lists them by hand)
    for folder in PACKAGES:
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.relative_to(REPO).as_posix()
            assert f"duchkit/{rel}" in names, f"{rel} is missing from setup.cfg's packages"
    assert "duchkit/pipelines/demo/demo.toml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "duchkit = duchkit.pipelines.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
