"""Every `--device cuda` entry point on a machine without CUDA: a one-line error naming the
device (exit code 2 for the CLI, a clean SystemExit for a benchmark), never a traceback and
nothing written; and benchmarks/gpu_check.sh, the prepared GPU run, parses and its Python part
imports and checks its arguments here. (The CUDA paths themselves run in gpu_check.sh on a GPU.)
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from duchkit.pipelines.cli import main
from duchkit.pipelines.runner import DeviceUnavailable, resolve_device
from duchkit.pipelines.stage import ConfigError

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="this machine has CUDA: the paths run for real")


def test_resolve_device_names_the_missing_device():
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailable, match="cuda"):
        resolve_device("cuda")
    # a ConfigError for the CLI (exit code 2), still the RuntimeError it always was
    assert issubclass(DeviceUnavailable, ConfigError)
    assert issubclass(DeviceUnavailable, RuntimeError)


@pytest.mark.parametrize("argv", [
    ["run"],
    ["embed", "images"],
    ["embed", "texts"],
    ["augment-images"],
    ["augment-text", "--method", "backtranslation"],
    ["study", "--config", "demo"],
    ["train", "--images", "IMAGES", "--texts", "TEXTS"],
    ["search", "--run", "RUN", "--text", "a plane"],
], ids=lambda a: " ".join(a[:2]))
def test_cli_cuda_without_a_gpu_exits_2_naming_the_device(argv, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    if argv[0] in ("run", "embed", "augment-images", "augment-text", "study", "train"):
        argv += ["--out", str(out)]
    if argv[0] in ("run", "embed", "augment-images", "augment-text", "study"):
        argv += ["--quiet"]
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    if argv[0] != "study":  # nothing written (a study sets up its log first)
        assert not out.exists()


CUDA_BENCHMARKS = ["image_embed.py", "runtimes.py", "duch_train.py", "hamming_search.py",
                   "backtranslate.py", "rule_augment.py"]


@pytest.mark.parametrize("script", CUDA_BENCHMARKS)
def test_benchmarks_with_cuda_without_a_gpu_stop_with_one_line(script):
    p = subprocess.run([sys.executable, str(BENCH / script), "--device", "cuda", "--quick"],
                       capture_output=True, text=True, timeout=300, cwd=BENCH,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "CUDA" in p.stderr or "cuda" in p.stderr


@pytest.mark.parametrize("option", ["--baseline-epochs", "--epochs"])
def test_duch_train_refuses_fewer_than_one_epoch_by_name(option):
    p = subprocess.run([sys.executable, str(BENCH / "duch_train.py"), option, "0"],
                       capture_output=True, text=True, timeout=300, cwd=BENCH,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"{option} must be at least 1" in p.stderr


def test_every_benchmark_with_a_device_option_is_checked_here():
    """A new benchmark that takes --device cuda joins the list above (and gpu_check.sh)."""
    takes_cuda = sorted(p.name for p in BENCH.glob("*.py")
                        if '"cuda"' in p.read_text() and "--device" in p.read_text()
                        and p.name != "gpu_check.py")
    assert takes_cuda == sorted(CUDA_BENCHMARKS)
    script = (BENCH / "gpu_check.sh").read_text()
    for name in CUDA_BENCHMARKS:
        assert f"benchmarks/{name}" in script, name


def test_gpu_check_script_parses_and_its_python_part_imports():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its top level needs nothing of benchmarks/
    assert set(module.CHECKS) == {"train", "evaluate", "search", "embed-images", "embed-texts",
                                  "backtranslate", "cli", "study"}
    with pytest.raises(SystemExit) as exc:
        module.main(["paths", "--device", "cuda"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        module.main(["paths", "--device", "tpu"])  # argparse: a usage error


def test_gpu_check_sh_rejects_a_bad_device_before_doing_anything(tmp_path):
    p = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "tpu"],
                       capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path)})
    assert p.returncode == 2 and "cuda or cpu" in p.stderr
    assert not any(tmp_path.iterdir())
