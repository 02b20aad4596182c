"""A run folder is shared between people: loading its checkpoint must never run code, and a
corrupted, swapped or truncated checkpoint is refused with a message naming the file."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from duchkit.hashing.checkpoint import CheckpointError, load_checkpoint, sha256_file
from duchkit.hashing.synthetic import class_structured
from duchkit.hashing.train import TrainConfig, load_model, train
from duchkit.pipelines.cli import main
from tests.duch_shards import write_stages

SMALL = TrainConfig(bits=16, epochs=2, batch_size=64, hidden=64, seed=3)
QUIET = dict(log=lambda s: None)


class Payload:
    """What a hostile checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def feats():
    return class_structured(n_images=200, n_classes=4, image_dim=16, text_dim=12,
                            image_views=2, seed=0)


def _trained(feats, run):
    train(SMALL, feats, run, **QUIET)
    return run / "checkpoint.pt"


def _record(run, path):
    """Make run.json vouch for `path`: an attacker who controls the whole folder can do this."""
    info = json.loads((run / "run.json").read_text())
    info["checkpoint"]["sha256"] = sha256_file(path)
    (run / "run.json").write_text(json.dumps(info))


def test_checkpoint_loads_with_weights_only_and_records_its_sha256(feats, tmp_path):
    ck = _trained(feats, tmp_path)
    state = torch.load(ck, weights_only=True)  # plain data: the safe loader reads all of it
    assert state["epoch"] == 1 and isinstance(state["config"], dict)
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    record = json.loads((tmp_path / "run.json").read_text())["checkpoint"]
    assert record["sha256"] == sha256_file(ck) and record["file"] == "checkpoint.pt"


def test_a_pickled_payload_never_runs(feats, tmp_path):
    ck = _trained(feats, tmp_path)
    marker = tmp_path / "owned"
    state = torch.load(ck, weights_only=True)
    state["config"] = Payload(marker)
    torch.save(state, ck)
    _record(tmp_path, ck)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(ck)
    with pytest.raises(CheckpointError, match="could run code"):
        train(dataclasses.replace(SMALL, epochs=3), feats, tmp_path, resume=True, **QUIET)
    assert not marker.exists()


def test_flipped_bytes_are_refused(feats, tmp_path):
    ck = _trained(feats, tmp_path)
    blob = bytearray(ck.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    ck.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(ck)


def test_truncated_checkpoint_is_a_clear_error(feats, tmp_path):
    ck = _trained(feats, tmp_path)
    ck.write_bytes(ck.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(ck)
    _record(tmp_path, ck)  # even when run.json vouches for it, the load fails cleanly
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(ck)


def test_a_checkpoint_without_a_recorded_hash_is_refused(feats, tmp_path):
    ck = _trained(feats, tmp_path)
    (tmp_path / "run.json").unlink()
    with pytest.raises(CheckpointError, match="records no sha256"):
        load_model(ck)


def test_cli_resume_of_a_hostile_checkpoint_exits_2_without_running_it(feats, tmp_path, capsys):
    stages = write_stages(tmp_path / "emb", feats, shard_rows=100)
    run = tmp_path / "run"
    args = ["train", "--images", str(stages[0]), "--texts", str(stages[1]), "--out", str(run),
            "--bits", "16", "--epochs", "2", "--batch-size", "64", "--hidden", "64",
            "--device", "cpu", "--quiet"]
    assert main(args) == 0
    ck = run / "checkpoint.pt"
    marker = tmp_path / "owned"
    state = torch.load(ck, weights_only=True)
    state["history"] = [Payload(marker)]
    torch.save(state, ck)
    _record(run, ck)
    capsys.readouterr()
    assert main(args[:-1] + ["--epochs", "3", "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(ck) in err and "could run code" in err
    assert "Traceback" not in err
    assert not marker.exists()
    from duchkit.pipelines.search import hash_query
    from duchkit.pipelines.stage import ConfigError

    with pytest.raises(ConfigError, match="could run code"):  # what search and its CLI use
        hash_query(run, "text", np.zeros((1, 12), np.float32), "cpu")
    assert not marker.exists()
