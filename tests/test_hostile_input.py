"""Hostile input, one case per class: image files, captions JSON, precomp text, configs, CLI
options and run folders (checkpoints: test_checkpoint_safety.py). For each: exit code 2 and a
one-line message naming the file, entry or field (never a traceback), or a rejects row in
lenient mode; no partial output; and a rerun after fixing the input succeeds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from duchkit.pipelines.cli import main
from duchkit.pipelines.folder_lock import folder_lock
from duchkit.pipelines.store import StageStore

STAGE = """
[[stages]]
name = "captions"
kind = "normalise-captions"
"""


@pytest.fixture
def archive(tmp_path, demo_dir):
    """Six demo images (three classes) copied with their captions: free to damage."""
    root = tmp_path / "archive"
    (root / "images").mkdir(parents=True)
    data = json.loads((demo_dir / "ucm" / "captions.json").read_text())
    keep = [im for c in ("airplane", "beach", "forest")
            for im in [x for x in data["images"] if x["classname"] == c][:2]]
    rows = [r.split("\t") for r in (demo_dir / "ucm" / "filename_map.tsv").read_text().splitlines()]
    lines = ["caption_filename\tjpg_path"]
    for name, _, rel in rows[1:]:
        if name in {im["filename"] for im in keep}:
            shutil.copy(demo_dir / "ucm" / rel, root / "images" / Path(rel).name)
            lines.append(f"{name}\timages/{Path(rel).name}")
    (root / "map.tsv").write_text("\n".join(lines) + "\n")
    (root / "captions.json").write_text(json.dumps({"images": keep}))
    return root


def config(root: Path, extra: str = "", dataset: str = "") -> Path:
    path = root / "run.toml"
    path.write_text(f'[dataset]\ncaptions = "captions.json"\nimages = "images"\n'
                    f'filename_map = "map.tsv"\n{dataset}\n[run]\nshard_rows = 10\n{extra}'
                    + STAGE)
    return path


def run(cfg: Path, out: Path, *more: str) -> int:
    return main(["run", "--config", str(cfg), "--out", str(out), "--quiet", *more])


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)
    return err


def image_of(root: Path, n: int = 0) -> Path:
    return sorted((root / "images").iterdir())[n]


# ---------------------------------------------------------------- image files

def test_truncated_jpeg_is_decided_at_validation(archive, tmp_path, capsys):
    bad = image_of(archive)
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    assert run(config(archive), out) == 2
    one_line_error(capsys, bad.name, "unreadable image")
    assert not out.exists()  # strict: nothing written
    assert run(config(archive), out, "--lenient") == 0
    rejects = pq.read_table(out / "records" / "rejects.parquet").to_pylist()
    assert len(rejects) == 5 and all(bad.name in r["reason"] for r in rejects)  # image + captions
    records = StageStore(out / "records").read_all()
    assert records.num_rows == 25 and bad.name not in "".join(
        records.column("image_path").to_pylist())
    bad.write_bytes(good)  # fixed: the rerun reads the dataset again, all 30 rows
    assert run(config(archive), out) == 0
    assert StageStore(out / "records").read_all().num_rows == 30


def test_image_over_the_pixel_limit_is_a_named_problem(archive, tmp_path, capsys):
    cfg = config(archive, dataset="max_image_pixels = 40000")  # the demo's are 256 x 256
    assert run(cfg, tmp_path / "out") == 2
    one_line_error(capsys, "over the limit of 40,000", "max_image_pixels")
    assert run(config(archive), tmp_path / "out") == 0


# ---------------------------------------------------------------- captions JSON

@pytest.mark.parametrize("field, value, says", [
    ("sentences", "text", "sentences is not a list"),
    ("sentences", {"raw": "a plane"}, "sentences is not a list"),
    ("sentences", 42, "sentences is not a list"),
    ("classname", 7, "non-text classname"),
    ("sentences", [{"text": "no raw"}], "caption object without 'raw'"),
    ("sentences", [{"raw": 5}], "non-text caption"),
])
def test_malformed_captions_json_is_named(archive, tmp_path, capsys, field, value, says):
    path = archive / "captions.json"
    data = json.loads(path.read_text())
    original = dict(data["images"][1])
    data["images"][1][field] = value
    path.write_text(json.dumps(data))
    assert run(config(archive), tmp_path / "strict") == 2
    err = one_line_error(capsys, "captions.json", f"images[1] ({original['filename']})", says)
    assert not (tmp_path / "strict").exists()
    assert run(config(archive), tmp_path / "lenient", "--lenient") == 0
    rejects = pq.read_table(tmp_path / "lenient" / "records" / "rejects.parquet").to_pylist()
    assert rejects and all(says in r["reason"] for r in rejects), (rejects, err)
    kept = StageStore(tmp_path / "lenient" / "records").read_all().column("image_id").to_pylist()
    assert original["filename"] not in kept


# ---------------------------------------------------------------- precomp text

def test_precomp_that_is_not_utf8_is_named(tmp_path, capsys):
    folder = tmp_path / "precomp"
    folder.mkdir()
    (folder / "train_caps.txt").write_bytes("a plane\n".encode("utf-16"))
    (folder / "train_filename.txt").write_text("airplane_1.tif\n")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[dataset]\nlayout = "precomp"\ncaptions = "{folder}"\n' + STAGE)
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    one_line_error(capsys, "train_caps.txt", "not UTF-8")
    (folder / "train_caps.txt").write_text("a plane on the apron\n")
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("text, says", [
    ('[dataset]\ncaptions = "captions.json"\n[stages]\nname = "a"\nkind = "normalise-captions"\n',
     "write [[stages]]"),
    ('[dataset]\ncaptions = "captions.json"\n[run]\nseed = "zero"\n', "seed = 'zero' is not int"),
    ('[dataset]\ncaptions = "captions.json"\n[[stages]]\nkind = "normalise-captions"\n'
     'lowercase = "no"\n', "lowercase = 'no' is not bool"),
    ('[dataset]\ncaptions = "captions.json"\n[run]\nshard_rows = 0\n', "shard_rows"),
    ('[dataset]\ncaptions = "captions.json"\n[run]\nlenient = 1\n', "lenient = 1 is not bool"),
])
def test_bad_configs_are_named(archive, tmp_path, capsys, text, says):
    cfg = archive / "bad.toml"
    cfg.write_text(text)
    assert run(cfg, tmp_path / "out") == 2
    one_line_error(capsys, "bad.toml", says)
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_utf8_is_named(archive, tmp_path, capsys):
    cfg = archive / "latin1.toml"
    cfg.write_bytes('[dataset]\ncaptions = "légendes.json"\n'.encode("latin-1"))
    assert run(cfg, tmp_path / "out") == 2
    one_line_error(capsys, "latin1.toml", "not UTF-8")


# ---------------------------------------------------------------- CLI options and folders

def test_out_that_is_a_file_is_named(archive, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    assert run(config(archive), target) == 2
    one_line_error(capsys, "a-file", "is a file")
    assert target.read_text() == "not a folder"


def test_a_second_writer_is_refused_naming_the_holder(archive, tmp_path, capsys):
    out = tmp_path / "out"
    with folder_lock(out, "duchkit run (a test holding it)"):
        import os
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-m", "duchkit.pipelines.cli", "run", "--config",
                               str(config(archive)), "--out", str(out), "--quiet"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "in use by duchkit run (a test holding it)" in done.stderr
        assert f"PID {os.getpid()}" in done.stderr and "Traceback" not in done.stderr
    assert not StageStore(out / "records").is_complete()
    assert run(config(archive), out) == 0  # released: the next run proceeds


def test_a_lock_left_by_a_killed_run_is_taken_over(archive, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".duchkit.lock").write_text(json.dumps({"pid": 999_999_999, "host": __import__(
        "socket").gethostname(), "command": "duchkit run", "started": "then"}))
    with caplog.at_level("WARNING", logger="duchkit"):
        assert run(config(archive), out) == 0
    assert "took over the lock of PID 999999999" in caplog.text
    assert "no longer running" in caplog.text


def test_damaged_records_are_read_again(archive, tmp_path, caplog):
    out = tmp_path / "out"
    assert run(config(archive), out) == 0
    shard = out / "records" / "part-00001.parquet"
    good = shard.read_bytes()
    shard.unlink()  # deleted
    with caplog.at_level("WARNING", logger="duchkit"):
        assert run(config(archive), out) == 0
    assert "part-00001.parquet missing or changed" in caplog.text
    assert shard.read_bytes() == good
    blob = bytearray(good)
    blob[len(blob) // 2] ^= 0xFF  # flipped
    shard.write_bytes(bytes(blob))
    assert run(config(archive), out) == 0
    assert shard.read_bytes() == good
    # a parameter change after damage: records repaired, the next stage recomputed
    shard.unlink()
    cfg = config(archive)
    cfg.write_text(cfg.read_text() + "lowercase = true\n")
    assert run(cfg, out) == 0
    assert StageStore(out / "captions").read_all().num_rows == 30


def test_damaged_manifest_is_repaired_by_a_rerun(archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(config(archive), out) == 0
    (out / "captions" / "_manifest.json").write_text("{ not json")
    assert main(["export", str(out), "--format", "jsonl"]) == 2
    one_line_error(capsys, "_manifest.json")
    assert run(config(archive), out) == 0
    assert StageStore(out / "captions").manifest()["rows"] == 30


@pytest.mark.parametrize("args, says", [
    (["--k", "0"], "--k must be an integer >= 1"),
    (["--k", "-5"], "--k must be an integer >= 1"),
])
def test_evaluate_refuses_bad_numbers_and_never_overwrites_the_runs_own(tmp_path, capsys,
                                                                         args, says):
    from duchkit.hashing.synthetic import class_structured
    from tests.duch_shards import write_stages

    feats = class_structured(n_images=120, n_classes=4, image_dim=16, text_dim=12,
                             image_views=2, seed=0)
    images, texts = write_stages(tmp_path / "emb", feats, shard_rows=60)
    run_dir = tmp_path / "run"
    assert main(["train", "--images", str(images), "--texts", str(texts), "--out", str(run_dir),
                 "--bits", "16", "--epochs", "2", "--batch-size", "32", "--hidden", "32",
                 "--device", "cpu", "--quiet"]) == 0
    own = {p.name: p.read_bytes() for p in run_dir.glob("metrics*")}
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_dir), *args]) == 2
    one_line_error(capsys, says)
    assert main(["evaluate", "--run", str(run_dir), "--k", "5"]) == 0
    for name, blob in own.items():  # another k writes beside, never over, the run's own
        assert (run_dir / name).read_bytes() == blob, name
    assert (run_dir / "metrics-standard-class-k5.json").is_file()


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--batch-size", "1"),
                                           ("--hidden", "0"), ("--lr", "-1"), ("--k", "0"),
                                           ("--eval-every", "0"), ("--tau", "0")])
def test_train_refuses_bad_numbers_before_any_work(tmp_path, capsys, option, value):
    out = tmp_path / "run"
    assert main(["train", "--images", str(tmp_path / "i"), "--texts", str(tmp_path / "t"),
                 "--out", str(out), option, value, "--device", "cpu", "--quiet"]) == 2
    one_line_error(capsys, "bad training config")
    assert not out.exists()


def test_editing_one_caption_recomputes_only_the_shards_it_reaches(archive, tmp_path):
    cfg = config(archive)
    cfg.write_text(cfg.read_text() + '\n[[stages]]\nname = "images"\nkind = "augment-images"\n'
                   'input = "records"\n')
    out = tmp_path / "out"
    run(cfg, out)
    path = archive / "captions.json"
    data = json.loads(path.read_text())
    data["images"][4]["sentences"][0]["raw"] = "A freshly edited caption of this image ."
    path.write_text(json.dumps(data))
    m = {name: json.loads((out / name / "_manifest.json").read_text())
         for name in ("captions", "images")}
    assert run(cfg, out) == 0
    after = {name: json.loads((out / name / "_manifest.json").read_text())
             for name in ("captions", "images")}
    # row 20..29 is image 4's shard (10 rows a shard): one caption shard recomputed, and the
    # image views of that shard are the same bytes again
    assert after["captions"]["shards_computed"] == 1 and after["captions"]["shards_reused"] == 2
    assert after["images"]["shards_computed"] == 1
    assert [s["sha256"] for s in after["images"]["shards"]] == \
        [s["sha256"] for s in m["images"]["shards"]]


def test_a_full_disk_is_one_line_and_a_rerun_resumes(archive, tmp_path, capsys, monkeypatch):
    import errno

    import duchkit.pipelines.store as store

    real = store.write_table
    calls = {"n": 0}

    def fill_up(path, table):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, table)

    monkeypatch.setattr(store, "write_table", fill_up)
    out = tmp_path / "out"
    assert run(config(archive), out) == 2
    one_line_error(capsys, "cannot write", "No space left on device", str(out))
    assert not list(out.rglob(".*.tmp-*"))
    monkeypatch.setattr(store, "write_table", real)
    assert run(config(archive), out) == 0
    assert StageStore(out / "captions").read_all().num_rows == 30


def test_a_caption_of_control_characters_is_not_text(archive, tmp_path, capsys):
    path = archive / "captions.json"
    data = json.loads(path.read_text())
    data["images"][0]["sentences"][0]["raw"] = "\x00\x07\u200b\t"
    path.write_text(json.dumps(data))
    assert run(config(archive), tmp_path / "out") == 2
    one_line_error(capsys, "sentences[0]", "empty caption")


def test_inspect_names_a_foreign_parquet_folder(tmp_path, capsys):
    import pyarrow as pa

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), foreign / "part-00000.parquet")  # another writer
    assert main(["inspect", str(foreign)]) == 2
    err = one_line_error(capsys, "not a duchkit stage")
    assert "rerun" not in err and "INCOMPLETE" not in err
