"""checkpoint.pt: written so that `torch.load(weights_only=True)` reads it, and verified.

Run folders are shared between people, so loading one must never run code: the checkpoint holds
only tensors, plain dicts, lists, numbers and strings (the config as a dict, RNG states as
tensors), and it is read with `weights_only=True`. Its sha256 is recorded in the `run.json`
beside it, so a corrupted or swapped file is refused instead of silently changing the codes.

    save_checkpoint(run_dir / CHECKPOINT, state)    # atomic; records the sha256 in run.json
    state = load_checkpoint(run_dir / CHECKPOINT)   # verifies the sha256, then loads safely
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
RUN_JSON = "run.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _HashingWriter:
    """A write-only file that passes bytes on and keeps their sha256."""

    def __init__(self, f):
        self.f, self.hash = f, hashlib.sha256()

    def write(self, data) -> int:
        self.hash.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def checkpoint_due(epoch: int, total_epochs: int, every: int, seconds: float,
                   since_last: float) -> bool:
    """Whether to write a checkpoint after `epoch` (0-based): after the last epoch always,
    otherwise every `every` epochs once `seconds` have passed since the last one. A write costs
    about a second for a 4096-wide model, so every epoch would take a third of a short run."""
    if epoch + 1 == total_epochs:
        return True
    return (epoch + 1) % every == 0 and since_last >= seconds


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_run_json(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def checkpoint_record(run_dir: Path) -> dict | None:
    """run.json's record of the checkpoint: {"file", "sha256", "previous_sha256", "epoch"}."""
    return read_run_json(run_dir).get("checkpoint")


def rng_states() -> dict[str, Any]:
    """torch's, numpy's and Python's global RNG states as tensors and plain numbers."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next}}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> str:
    """Write `state` atomically and record its sha256 in run.json beside it; returns the sha256.

    run.json is updated before the rename and keeps the previous hash, so a crash at any point
    leaves a checkpoint that one of the two recorded hashes verifies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        hashing = _HashingWriter(f)  # hashed as written: reading 100+ MB back doubled the cost
        torch.save(state, hashing)
        f.flush()
        os.fsync(f.fileno())
    digest = hashing.hash.hexdigest()
    run = read_run_json(path.parent)
    old = run.get("checkpoint") or {}
    run["checkpoint"] = {"file": path.name, "sha256": digest,
                         "previous_sha256": old.get("sha256"), "epoch": state.get("epoch")}
    _write_json(path.parent / RUN_JSON, run)
    os.replace(tmp, path)
    return digest


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify `path` against the sha256 recorded in run.json, then load it with
    `weights_only=True`. Every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    record = checkpoint_record(path.parent)
    if not record or not record.get("sha256"):
        raise CheckpointError(f"{path}: {path.parent / RUN_JSON} records no sha256 for it, so "
                              "it cannot be verified (a run folder of an older duchkit: retrain)")
    digest = sha256_file(path)
    if digest not in (record.get("sha256"), record.get("previous_sha256")):
        raise CheckpointError(f"{path}: its sha256 {digest[:12]}... does not match the "
                              f"{record['sha256'][:12]}... recorded in {path.parent / RUN_JSON}: "
                              "the file is corrupted or was replaced; refusing to load it")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's own text advises weights_only=False: never
        raise CheckpointError(f"{path}: holds objects other than tensors and plain data; "
                              "loading it could run code, so duchkit cannot load it safely") \
            from None
    except Exception as exc:  # truncated zip, not a torch file: one line, never a traceback
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a checkpoint duchkit can read, truncated or "
                              f"damaged ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict) or "shape" not in state:
        raise CheckpointError(f"{path}: not a duchkit checkpoint (no model shape)")
    return state
