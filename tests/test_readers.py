"""Dataset readers on the real archives, and every kind of bad input they must name."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from duchkit.pipelines.readers import DatasetError, DatasetSpec, read_dataset, read_filename_map
from duchkit.pipelines.runner import ingest


def test_ucm_full_archive_through_the_filename_map(shared_data):
    ucm = shared_data / "ucm"
    result = read_dataset(DatasetSpec(ucm / "captions.json", images=ucm / "images",
                                      filename_map=ucm / "filename_map.tsv", name="ucm"))
    t = result.records
    assert result.problems == []
    assert t.num_rows == 10_500
    assert len(set(t.column("image_id").to_pylist())) == 2_100
    assert len(set(t.column("caption_id").to_pylist())) == 10_500
    assert len(set(t.column("caption").to_pylist())) == 2_032
    assert Counter(t.column("split").to_pylist()) == {"train": 8400, "val": 1050, "test": 1050}
    labels = Counter(t.column("label").to_pylist())
    assert len(labels) == 21 and set(labels.values()) == {500}
    row = t.slice(0, 1).to_pylist()[0]
    assert row["image_id"] == "1.tif" and row["caption_id"] == "1.tif#0"
    assert row["image_path"].endswith("images/agricultural/agricultural00.jpg")
    assert row["label"] == "agricultural" and row["caption"] == "There is a piece of farmland ."
    # k.tif -> class (k-1)//100, image (k-1)%100, as the data README states
    last = t.slice(t.num_rows - 1, 1).to_pylist()[0]
    assert last["image_id"] == "2100.tif" and last["image_path"].endswith("tenniscourt99.jpg")


def test_rsitmd_precomp_layout(shared_data, tmp_path):
    spec = DatasetSpec(shared_data / "rsitmd_captions", layout="precomp")
    result = read_dataset(spec)
    # The real RSITMD release has 4 images whose 5 captions are all empty lines: found, named.
    assert result.problem_counts() == {"empty caption": 20}
    assert {p.entry.split(" ")[-1] for p in result.problems} == {
        "(mountain_2378.tif)", "(railwaystation_3254.tif)", "(storagetanks_4367.tif)",
        "(viaduct_4635.tif)"}
    with pytest.raises(DatasetError, match=r"20 x empty caption.*\n.*train_caps.txt: line 9631"):
        ingest(spec, tmp_path / "strict", shard_rows=10_000, lenient=False)
    manifest = ingest(spec, tmp_path / "lenient", shard_rows=10_000, lenient=True)
    assert manifest["rows"] == 23_695 and len(manifest["shards"]) == 3
    assert manifest["rejects"]["rows"] == 20
    t = result.records
    assert t.num_rows == 23_695
    assert len(set(t.column("image_id").to_pylist())) == 4_739
    assert len(set(t.column("caption").to_pylist())) == 21_825
    assert set(Counter(t.column("image_id").to_pylist()).values()) == {5}
    assert Counter(t.column("split").to_pylist()) == {"train": 21_435, "test": 2_260}
    assert len(set(t.column("label").to_pylist())) == 33
    first = t.slice(0, 1).to_pylist()[0]
    assert first["image_id"] == "baseballfield_452.tif" and first["label"] == "baseballfield"
    assert first["image_path"] is None
    test_rows = [r for r in t.to_pylist() if r["image_id"] == "boat_0.tif"]
    assert [r["caption_index"] for r in test_rows] == [0, 1, 2, 3, 4]


def test_sydney_precomp_has_no_labels(shared_data):
    result = read_dataset(DatasetSpec(shared_data / "sydney_captions", layout="precomp"))
    t = result.records
    assert t.num_rows == 2_775 and len(set(t.column("image_id").to_pylist())) == 555
    assert set(t.column("label").to_pylist()) == {None}


def test_any_extension_and_unequal_sizes_without_a_map(tmp_path, demo_dir):
    # Caption file says k.tif; the folder holds k.png of another size: found by stem.
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (300, 180), "green").save(images / "7.png")
    Image.new("RGB", (256, 256), "blue").save(images / "8.jpeg")
    caps = {"images": [
        {"filename": "7.tif", "split": "train", "classname": "a", "sentences": [{"raw": "x y"}]},
        {"filename": "8.tif", "split": "test", "classname": "b", "sentences": [{"raw": "z"}]}]}
    (tmp_path / "c.json").write_text(json.dumps(caps))
    t = read_dataset(DatasetSpec(tmp_path / "c.json", images=images)).records
    assert [Path(p).name for p in t.column("image_path").to_pylist()] == ["7.png", "8.jpeg"]


def test_filename_map_errors(tmp_path):
    bad = tmp_path / "map.tsv"
    bad.write_text("caption_filename\tjpg_path\n1.tif\ta.jpg\n1.tif\tb.jpg\n")
    with pytest.raises(DatasetError, match=r"map.tsv: line 3: '1.tif' is mapped twice"):
        read_filename_map(bad)


# ---------------------------------------------------------------- bad input

def _demo_copy(tmp_path: Path, demo_dir: Path) -> tuple[Path, dict]:
    root = tmp_path / "ds"
    shutil.copytree(demo_dir / "ucm", root)
    return root, json.loads((root / "captions.json").read_text())


def _write(root: Path, data: dict) -> DatasetSpec:
    (root / "captions.json").write_text(json.dumps(data))
    return DatasetSpec(root / "captions.json", images=root / "images",
                       filename_map=root / "filename_map.tsv", name="bad")


def _break_missing_image(root, data):
    (root / "images" / "airplane" / "airplane00.jpg").unlink()
    return "missing image", 5


def _break_unreadable_image(root, data):
    (root / "images" / "beach" / "beach00.jpg").write_bytes(b"not a jpeg at all")
    return "unreadable image", 5


def _break_duplicate_id(root, data):
    data["images"].append(dict(data["images"][3]))
    return "duplicate image id", 1


def _break_no_captions(root, data):
    data["images"][4]["sentences"] = []
    return "image with no captions", 1


def _break_empty_caption(root, data):
    data["images"][5]["sentences"][2]["raw"] = "   "
    return "empty caption", 1


def _break_non_text_caption(root, data):
    data["images"][6]["sentences"][1]["raw"] = 42
    return "non-text caption", 1


def _break_unknown_split(root, data):
    data["images"][7]["split"] = "holdout"
    return "unknown split", 1


BREAKERS = [_break_missing_image, _break_unreadable_image, _break_duplicate_id,
            _break_no_captions, _break_empty_caption, _break_non_text_caption,
            _break_unknown_split]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda b: b.__name__[7:])
def test_strict_mode_names_the_problem_and_writes_nothing(tmp_path, demo_dir, breaker):
    root, data = _demo_copy(tmp_path, demo_dir)
    reason, count = breaker(root, data)
    spec = _write(root, data)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        ingest(spec, out, shard_rows=100, lenient=False)
    message = str(err.value)
    assert f"{count} x {reason}" in message
    assert "images[" in message or ".jpg" in message  # names the entry or the file
    assert not (out / "records").exists() or not any((out / "records").rglob("*.parquet"))


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda b: b.__name__[7:])
def test_lenient_mode_writes_every_rejected_row(tmp_path, demo_dir, breaker):
    root, data = _demo_copy(tmp_path, demo_dir)
    reason, count = breaker(root, data)
    n_captions = sum(len(i["sentences"]) for i in data["images"])
    spec = _write(root, data)
    manifest = ingest(spec, tmp_path / "out", shard_rows=100, lenient=True)
    rejects = pq.read_table(tmp_path / "out" / "records" / "rejects.parquet").to_pylist()
    assert len(rejects) == count and all(r["reason"].startswith(reason) for r in rejects)
    assert manifest["rejects"]["counts"] == {reason: count}
    # Nothing lost: kept rows + rejected caption rows account for every caption.
    rejected_captions = {"missing image": 5, "unreadable image": 5, "duplicate image id": 5,
                         "image with no captions": 0, "unknown split": 5}.get(reason, count)
    assert manifest["rows"] + rejected_captions == n_captions


def test_precomp_count_mismatch_is_named(tmp_path):
    (tmp_path / "train_caps.txt").write_text("a\nb\nc\n")
    (tmp_path / "train_filename.txt").write_text("x.tif\ny.tif\n")
    with pytest.raises(DatasetError, match=r"train_caps.txt has 3 captions but .*train_filename"
                                           r".txt has 2 names"):
        read_dataset(DatasetSpec(tmp_path, layout="precomp"))


def test_invalid_json_is_named(tmp_path):
    (tmp_path / "c.json").write_text('{"images": [ {"filename": "1.tif",, }]}')
    with pytest.raises(DatasetError, match=r"c.json: not valid JSON \(line 1"):
        read_dataset(DatasetSpec(tmp_path / "c.json"))
