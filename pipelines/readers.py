"""Dataset readers: one record per (image, caption) with stable ids, label, split and image path.

Layouts:
- captions JSON (UCM-captions, RSICD, Sydney-captions): `images[].filename, split,
  classname/classcode, sentences[].raw`;
- precomp text (`<split>_caps.txt` + `<split>_filename.txt`): names listed once per image or
  repeated per caption, class from the file-name prefix or absent;
- an image root plus an optional file-name map, since archives name images differently in the
  caption file and on disk (UCM-captions says `k.tif`, the folder has `<class>/<class>NN.jpg`).

Readers never raise on the first bad entry: they collect every problem, so the caller can report
all of them at once (strict) or write them to a rejects file (lenient).
"""
from __future__ import annotations

import csv
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from duchkit.augment.image_decode import DEFAULT_MAX_PIXELS, ImageDecodeError, open_image
from duchkit.pipelines.schema import RECORD_SCHEMA, SPLIT_ALIASES

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
LAYOUTS = ("captions-json", "precomp")


class DatasetError(ValueError):
    """The dataset cannot be read as given; the message names files, entries and counts."""


@dataclass
class Problem:
    file: str
    entry: str
    reason: str
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """Where a dataset lives and how it is laid out; validated once, here."""

    captions: Path
    layout: str = "captions-json"
    images: Path | None = None
    filename_map: Path | None = None
    name: str | None = None
    label_from_filename: bool = True  # precomp only: class = file-name prefix before '_'
    check_images: bool = True  # decode every image once, at validation
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are problems, not crashes

    def __post_init__(self) -> None:
        self.captions = Path(self.captions)
        self.images = Path(self.images) if self.images else None
        self.filename_map = Path(self.filename_map) if self.filename_map else None
        if self.layout not in LAYOUTS:
            raise DatasetError(f"dataset.layout must be one of {LAYOUTS}, not {self.layout!r}")
        if not self.captions.exists():
            raise DatasetError(f"dataset.captions: {self.captions} does not exist")
        if self.images is not None and not self.images.is_dir():
            raise DatasetError(f"dataset.images: {self.images} is not a folder")
        if self.filename_map is not None and not self.filename_map.is_file():
            raise DatasetError(f"dataset.filename_map: {self.filename_map} does not exist")
        if self.name is None:
            self.name = (self.captions.parent.name if self.captions.is_file()
                         else self.captions.name)

    def source_files(self) -> list[Path]:
        files = [self.captions] if self.captions.is_file() else sorted(
            p for p in self.captions.iterdir() if p.suffix == ".txt")
        return files + ([self.filename_map] if self.filename_map else [])


@dataclass
class ReadResult:
    records: pa.Table
    problems: list[Problem]

    def problem_counts(self) -> Counter:
        return Counter(p.reason.split(":")[0] for p in self.problems)


def _caption_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"non-text caption: {type(text).__name__} {text!r}"[:120]
    # control and format characters (NUL, BEL, zero-width space) are not text
    if not "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip():
        return "empty caption" if not text.strip() else \
            f"empty caption: only control characters {text!r}"[:120]
    return None


def _type_and_value(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _split(value: Any) -> str | None:
    return SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None


def read_captions_json(path: Path, dataset: str) -> tuple[list[dict], list[Problem]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected an object with an 'images' list (captions JSON "
                           "layout of UCM-captions/RSICD/Sydney-captions)")
    classes = data.get("classes") or {}
    rows: list[dict] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, img in enumerate(data["images"]):
        entry = f"images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("filename"), str) \
                or not img["filename"].strip():
            problems.append(Problem(str(path), entry, "missing image id: no 'filename'",
                                    {"entry": repr(img)[:200]}))
            continue
        image_id = img["filename"].strip()
        entry = f"images[{i}] ({image_id})"
        label = img.get("classname")
        base = {"dataset": dataset, "image_id": image_id, "label": None, "split": None,
                "image_path": None}
        if label is not None and not isinstance(label, str):
            problems.append(Problem(str(path), f"{entry}.classname",
                                    f"non-text classname: {_type_and_value(label)}", base))
            continue
        code = img.get("classcode")
        if label is None and code is not None:
            if isinstance(code, bool) or not isinstance(code, (int, str)):
                problems.append(Problem(str(path), f"{entry}.classcode",
                                        f"classcode is not an integer or text: "
                                        f"{_type_and_value(code)}", base))
                continue
            label = classes.get(str(code), str(code)) if isinstance(classes, dict) else str(code)
            if not isinstance(label, str):
                label = str(label)
        split = _split(img.get("split"))
        base = {"dataset": dataset, "image_id": image_id, "label": label,
                "split": split, "image_path": None}
        if image_id in seen:
            problems.append(Problem(str(path), entry, "duplicate image id", base))
            continue
        seen.add(image_id)
        if split is None:
            problems.append(Problem(str(path), entry,
                                    f"unknown split: {img.get('split')!r} (expected train/val/test)",
                                    base))
            continue
        sentences = img.get("sentences")
        if sentences is not None and not isinstance(sentences, list):
            problems.append(Problem(str(path), f"{entry}.sentences",
                                    "sentences is not a list of {\"raw\": text} objects: "
                                    f"{_type_and_value(sentences)}", base))
            continue
        if not sentences:
            problems.append(Problem(str(path), entry, "image with no captions", base))
            continue
        for k, sent in enumerate(sentences):
            if isinstance(sent, dict) and "raw" not in sent:
                problems.append(Problem(str(path), f"{entry}.sentences[{k}]",
                                        "caption object without 'raw'",
                                        dict(base, caption_id=f"{image_id}#{k}", caption_index=k,
                                             caption=repr(sent)[:200])))
                continue
            raw = sent.get("raw") if isinstance(sent, dict) else sent
            row = dict(base, caption_id=f"{image_id}#{k}", caption_index=k, caption=raw)
            bad = _caption_problem(raw)
            if bad:
                problems.append(Problem(str(path), f"{entry}.sentences[{k}]", bad,
                                        dict(row, caption=repr(raw))))
            else:
                rows.append(row)
    return rows, problems


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # a trailing newline ends the last line, it does not start a new one
    return [line.rstrip("\r") for line in lines]


def read_precomp(folder: Path, dataset: str, label_from_filename: bool = True
                 ) -> tuple[list[dict], list[Problem]]:
    folder = Path(folder)
    rows: list[dict] = []
    problems: list[Problem] = []
    found = False
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        caps_path, names_path = folder / f"{split}_caps.txt", folder / f"{split}_filename.txt"
        if not caps_path.exists() and not names_path.exists():
            continue
        if not (caps_path.exists() and names_path.exists()):
            missing = names_path if caps_path.exists() else caps_path
            raise DatasetError(f"{folder}: {missing.name} is missing (precomp layout needs "
                               f"{split}_caps.txt and {split}_filename.txt together)")
        found = True
        caps, names = _read_lines(caps_path), _read_lines(names_path)
        if len(names) == len(caps):  # test layout: the name repeats for every caption
            owners = names
        elif names and len(caps) % len(names) == 0:
            per = len(caps) // len(names)
            owners = [n for n in names for _ in range(per)]
        else:
            raise DatasetError(
                f"{caps_path} has {len(caps)} captions but {names_path} has {len(names)} names: "
                "expected one name per caption or the same number of captions per name")
        counters: Counter = Counter()
        split_seen: set[str] = set()
        for line_no, (name, cap) in enumerate(zip(owners, caps), start=1):
            image_id = name.strip()
            if not image_id:
                problems.append(Problem(str(names_path), f"line {line_no}", "missing image id",
                                        {"caption": cap}))
                continue
            if image_id in seen and image_id not in split_seen:
                problems.append(Problem(str(names_path), f"line {line_no} ({image_id})",
                                        "duplicate image id: listed in another split",
                                        {"image_id": image_id, "split": split}))
                continue
            split_seen.add(image_id)
            k = counters[image_id]
            counters[image_id] += 1
            label = None
            if label_from_filename and "_" in image_id:
                label = image_id.rsplit("_", 1)[0]
            row = {"dataset": dataset, "image_id": image_id, "caption_id": f"{image_id}#{k}",
                   "caption_index": k, "label": label, "split": split, "image_path": None,
                   "caption": cap}
            bad = _caption_problem(cap)
            if bad:
                problems.append(Problem(str(caps_path), f"line {line_no} ({image_id})", bad, row))
            else:
                rows.append(row)
        seen |= split_seen
    if not found:
        raise DatasetError(f"{folder}: no <split>_caps.txt / <split>_filename.txt pairs found "
                           "(precomp layout)")
    return rows, problems


def read_filename_map(path: Path) -> dict[str, Path]:
    """TSV/CSV with a caption-side name column and an on-disk path column (first two columns
    unless headed caption_filename / jpg_path|image_path|path). Paths are relative to the map."""
    text = Path(path).read_text(encoding="utf-8")
    dialect = "excel-tab" if "\t" in text.split("\n", 1)[0] else "excel"
    reader = csv.reader(text.splitlines(), dialect=dialect)
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{path}: empty file-name map")
    lower = [h.strip().lower() for h in header]
    key_col = lower.index("caption_filename") if "caption_filename" in lower else 0
    path_names = [n for n in ("jpg_path", "image_path", "path") if n in lower]
    has_header = "caption_filename" in lower or bool(path_names)
    val_col = lower.index(path_names[0]) if path_names else 1
    rows = reader if has_header else [header, *reader]
    mapping: dict[str, Path] = {}
    for line_no, row in enumerate(rows, start=2 if has_header else 1):
        if not row:
            continue
        if len(row) <= max(key_col, val_col):
            raise DatasetError(f"{path}: line {line_no} has {len(row)} columns, expected "
                               f"at least {max(key_col, val_col) + 1}")
        key = row[key_col].strip()
        if key in mapping:
            raise DatasetError(f"{path}: line {line_no}: {key!r} is mapped twice")
        mapping[key] = (Path(path).parent / row[val_col].strip())
    return mapping


class ImageLocator:
    """Finds the file of an image id: through the map, then by exact name, then by stem with any
    image extension anywhere under the root (archives re-encode .tif as .jpg)."""

    def __init__(self, root: Path | None, filename_map: dict[str, Path] | None):
        self.root = root
        self.map = filename_map or {}
        self._by_stem: dict[str, list[Path]] | None = None

    def _stems(self) -> dict[str, list[Path]]:
        if self._by_stem is None:
            self._by_stem = {}
            if self.root is not None:
                for p in sorted(self.root.rglob("*")):
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                        self._by_stem.setdefault(p.stem, []).append(p)
        return self._by_stem

    def locate(self, image_id: str) -> tuple[Path | None, str | None]:
        if image_id in self.map:
            p = self.map[image_id]
            if not p.exists() and self.root is not None and (self.root / p.name).exists():
                p = self.root / p.name
            return (p, None) if p.exists() else (p, f"missing image: {p} (from the file-name map)")
        if self.root is None:
            return None, None
        direct = self.root / image_id
        if direct.is_file():
            return direct, None
        candidates = self._stems().get(Path(image_id).stem, [])
        if len(candidates) == 1:
            return candidates[0], None
        if len(candidates) > 1:
            return None, f"ambiguous image: {image_id} matches {[str(c) for c in candidates[:3]]}"
        return None, f"missing image: no file for {image_id} under {self.root}"


def check_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """None if the image decodes completely, else why not. JPEGs decode at 1/8 scale (the
    whole bitstream is still read, so a truncated file fails) to keep validation cheap."""
    from PIL import UnidentifiedImageError

    try:
        with open_image(path, str(path), max_pixels) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    except ImageDecodeError as exc:
        return f"unreadable image: {exc}"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"unreadable image: {path} ({type(exc).__name__}: {exc})"
    return None


def read_dataset(spec: DatasetSpec) -> ReadResult:
    """Read and validate a dataset; returns the good records and every problem found."""
    if spec.layout == "captions-json":
        if not spec.captions.is_file():
            raise DatasetError(f"dataset.captions: {spec.captions} must be the captions JSON file")
        rows, problems = read_captions_json(spec.captions, spec.name)
    else:
        if not spec.captions.is_dir():
            raise DatasetError(f"dataset.captions: {spec.captions} must be the precomp folder")
        rows, problems = read_precomp(spec.captions, spec.name, spec.label_from_filename)

    if spec.images is not None or spec.filename_map is not None:
        locator = ImageLocator(spec.images, read_filename_map(spec.filename_map)
                               if spec.filename_map else None)
        verdict: dict[str, tuple[Path | None, str | None]] = {}
        kept = []
        for row in rows:
            iid = row["image_id"]
            if iid not in verdict:
                path, bad = locator.locate(iid)
                if bad is None and path is not None and spec.check_images:
                    bad = check_image(path, spec.max_image_pixels)
                verdict[iid] = (path, bad)
            path, bad = verdict[iid]
            row["image_path"] = str(path) if path is not None else None
            if bad:
                problems.append(Problem(str(spec.images or spec.filename_map), row["caption_id"],
                                        bad, row))
            else:
                kept.append(row)
        rows = kept
    table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    return ReadResult(table, problems)


def problems_table(problems: list[Problem]) -> pa.Table:
    return pa.table({
        "file": [p.file for p in problems],
        "entry": [p.entry for p in problems],
        "reason": [p.reason for p in problems],
        "row": [json.dumps(p.row, default=str, sort_keys=True) for p in problems],
    })


def describe_problems(problems: list[Problem], limit: int = 10) -> str:
    counts = Counter(p.reason.split(":")[0] for p in problems)
    lines = [f"{len(problems)} problem(s) in the dataset: " +
             ", ".join(f"{n} x {reason}" for reason, n in counts.most_common())]
    for p in problems[:limit]:
        lines.append(f"  {p.file}: {p.entry}: {p.reason}")
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    lines.append("Fix the input, or rerun with --lenient to write them to rejects.parquet "
                 "and go on without those rows.")
    return "\n".join(lines)
