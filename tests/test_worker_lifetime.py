"""Worker processes die with the run: a SIGKILL of `duchkit embed images` (its encoder processes
hold ~0.5-0.85 GB each) leaves no process behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.models


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def running(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_sigkill_of_the_run_leaves_no_encoder_process(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "duchkit.pipelines.cli", "embed", "images", "--out", str(out),
         "--encoder-procs", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, workers = time.time() + 180, set()
    while time.time() < deadline and proc.poll() is None:
        workers = descendants(proc.pid)
        if len(workers) >= 3 and (out / "image_embeddings").exists():  # server + 2 encoders
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the encoder processes never started: {proc.communicate()[0][-2000:]!r}")
    time.sleep(1.0)  # let the encoders load their models
    workers = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(running(p) for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if running(p)]
    for p in alive:  # do not leave them to the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not alive, f"{len(alive)} of {len(workers)} worker processes outlived the run"
