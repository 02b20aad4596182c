"""Galleries for the HTML reports: what the augmentations did and what the codes retrieve.

    caption_gallery([rule_dir, backtranslation_dir])   original | rule-based (replaced words
                                                        marked; per word, its GloVe candidates
                                                        and their outcome) | back-translated,
                                                        with outcomes
    view_gallery([("AugmentedCenterCrop", views_dir)])  thumbnails of each setup's views for a
                                                        few images per class
    retrieval_gallery(run)                              top-10 of a few queries per direction,
                                                        relevant results marked (the paper's
                                                        Figs. 7/8)
    folder_galleries(root)                              whichever of the three a folder holds
                                                        (`duchkit inspect DIR --html`)

Each returns an HTML fragment ("" when there is nothing to show). Pictures are inline JPEG data
URIs, so the page that holds them is one file that opens offline. Only stage folders and run
folders are read (their shards, manifests, run.json): a gallery never recomputes a stage,
except that a view's pixels are recomputed from its view spec, as embed-images does.
"""
from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq

from duchkit.pipelines.store import MANIFEST, StageStore

THUMB = 112  # thumbnail side in pixels

STYLE = """
.gallery { border-collapse: collapse; margin: 0.6rem 0 1.2rem; }
.gallery td, .gallery th { border: 1px solid #ddd; padding: 0.25rem 0.4rem; vertical-align: top;
  font-size: 0.88rem; }
img.thumb { display: block; width: 96px; height: 96px; object-fit: cover; margin: 0; }
.gallery .cap { max-width: 30rem; }
mark.old { background: #ffd6d6; text-decoration: line-through; }
mark.new { background: #c8f7c5; }
.reason { color: #555; font-size: 0.8rem; }
details.cands { font-size: 0.78rem; color: #444; margin-top: 0.2rem; }
details.cands summary { cursor: pointer; color: #555; }
details.cands ul { margin: 0.2rem 0 0; padding-left: 1rem; }
.cand-chosen { background: #c8f7c5; }
.cand-out { color: #888; }
.hits { display: flex; flex-wrap: wrap; gap: 4px; }
.hit { border: 4px solid #d33; padding: 1px; font-size: 0.78rem; max-width: 9.5rem; }
.hit.rel { border-color: #2a2; }
.hit .rank { font-weight: bold; }
.hit img.thumb { width: 72px; height: 72px; }
.query { width: 10rem; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 0.6rem 0 1.2rem; }
.card { border: 1px solid #ddd; padding: 4px 6px; }
.card figure { margin: 0 4px 0 0; }
.card figcaption { font-size: 0.72rem; color: #555; max-width: 12rem; }
.legend { font-size: 0.85rem; color: #444; }
"""

# what each rule-augment reason means (augment.rule_augment.REASONS), for a reader
RULE_REASONS = {
    "changed": "changed: a noun/verb had a GloVe neighbour that kept its part of speech and "
               "passed the BERTScore filter",
    "no_candidates": "unchanged: every GloVe neighbour of its nouns/verbs was below the GloVe "
                     "threshold, changed the part of speech, was a function word or failed the "
                     "BERTScore filter",
    "no_marked_tokens": "unchanged: no noun or verb to replace",
    "unknown_words": "unchanged: no noun/verb has a GloVe vector",
    "no_words": "unchanged: only punctuation",
    "empty": "unchanged: empty caption",
}


# ---------------------------------------------------------------- pictures

def jpeg_uri(pixels: np.ndarray, size: int = THUMB, quality: int = 85) -> str:
    """An RGB uint8 array as a square JPEG thumbnail data URI (centre-cropped to a square)."""
    import cv2

    h, w = pixels.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = np.ascontiguousarray(pixels[top:top + s, left:left + s])
    small = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cannot encode a thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img class="thumb" alt="{html.escape(alt)}" src="{uri}">'


def file_thumb(path: str, image_id: str, crop: int = 0) -> str:
    """Thumbnail of an image file ("" when it cannot be read)."""
    from duchkit.pipelines.stages.augment_images import BadImage, read_image

    try:
        return jpeg_uri(read_image(path, image_id, crop).pixels)
    except (BadImage, OSError, ValueError):
        return ""


# ---------------------------------------------------------------- reading stages

def manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def read_columns(folder: Path, columns: Sequence[str],
                 optional: Sequence[str] = ()) -> dict[str, list]:
    """The given columns of every shard of a completed stage ({} if it lacks one); the
    `optional` ones are None in the rows of a shard without them (older stage versions)."""
    store = StageStore(Path(folder))
    if not store.is_complete():
        return {}
    out: dict[str, list] = {c: [] for c in list(columns) + list(optional)}
    for shard in store.shard_paths():
        names = pq.read_schema(shard).names
        if any(c not in names for c in columns):
            return {}
        extra = [c for c in optional if c in names]
        t = pq.read_table(shard, columns=list(columns) + extra)
        for c in out:
            out[c] += t.column(c).to_pylist() if c in names else [None] * t.num_rows
    return out


def _round_robin(groups: dict[str, list], n: int) -> list:
    """Up to n items, one from each group in turn (groups in sorted order)."""
    out, keys, i = [], sorted(groups), 0
    while len(out) < n and any(i < len(groups[k]) for k in keys):
        out += [groups[k][i] for k in keys if i < len(groups[k])][: n - len(out)]
        i += 1
    return out


# ---------------------------------------------------------------- captions

def _marked(text: str, positions: dict[int, str], css: str) -> str:
    """The text with the tokens at `positions` wrapped in <mark class=css>."""
    from duchkit.augment.rule_augment import split_caption

    tokens, gaps = split_caption(text)
    out = [html.escape(gaps[0])]
    for i, (tok, gap) in enumerate(zip(tokens, gaps[1:])):
        tok_html = html.escape(tok)
        if i in positions:
            tok_html = f'<mark class="{css}">{tok_html}</mark>'
        out += [tok_html, html.escape(gap)]
    return "".join(out)


def _new_positions(augmented: str, reps: list[dict]) -> dict[int, str]:
    """Token positions of the replacing words in the augmented caption: the same positions
    when a replacement is one token (always, for GloVe words), else found by the word."""
    from duchkit.augment.rule_augment import split_caption

    tokens, _ = split_caption(augmented)
    found = {}
    for r in reps:
        p = r["position"]
        if 0 <= p < len(tokens) and tokens[p].lower() == str(r["new"]).lower():
            found[p] = r["new"]
        else:
            for i, t in enumerate(tokens):
                if t.lower() == str(r["new"]).lower():
                    found[i] = r["new"]
                    break
    return found


def _num(x: float) -> str:
    """A score in two decimals without the leading zero: .83, -.05, 1.00."""
    text = f"{x:.2f}"
    return text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text


def candidate_outcome(c: dict, threshold: float | None = None) -> str:
    """What became of one GloVe candidate (a `candidates` struct of rule-augment), in short
    words: "chosen, F1 .83", "filtered: BERTScore .71 < .75", "filtered: POS NN→JJ", ..."""
    f1 = c.get("bertscore_f1")
    outcome = c.get("outcome")
    if outcome == "chosen":
        return f"chosen, F1 {_num(f1)}" if f1 is not None else "chosen"
    if outcome == "not_chosen":
        return f"passed, F1 {_num(f1)}, not chosen" if f1 is not None else "passed, not chosen"
    if outcome == "below_bertscore":
        below = f" < {_num(threshold)}" if threshold is not None else " (below the threshold)"
        return f"filtered: BERTScore {_num(f1)}{below}" if f1 is not None else \
            "filtered: BERTScore"
    if outcome == "pos_changed":
        return f"filtered: POS {c.get('old_tag') or '?'}→{c.get('tag') or '?'}"
    if outcome == "function_word":
        return "function word"
    if outcome == "not_single_token":
        return "not one token"
    return str(outcome)


def candidate_details(candidates: list[dict] | None, threshold: float | None = None) -> str:
    """A <details> element listing, per marked word, its GloVe candidates with their outcomes
    ("" for none: no candidates, or a stage folder written before the column existed)."""
    if not candidates:
        return ""
    words: dict[int, list[dict]] = {}
    for c in candidates:
        words.setdefault(c["position"], []).append(c)
    items = []
    for group in words.values():
        first = group[0]
        parts = []
        for c in group:
            css = ("cand-chosen" if c.get("outcome") == "chosen" else
                   "" if c.get("outcome") == "not_chosen" else "cand-out")
            word = html.escape(str(c.get("candidate")))
            parts.append(f'<span class="{css}">{word}</span>' if css else word)
            parts[-1] += f" ({html.escape(candidate_outcome(c, threshold))})"
        items.append(f"<li><b>{html.escape(str(first.get('old')))}</b> "
                     f"{html.escape(str(first.get('old_tag') or ''))}: "
                     + " · ".join(parts) + "</li>")
    chosen = sum(c.get("outcome") == "chosen" for c in candidates)
    return (f'<details class="cands"><summary>{len(candidates)} GloVe candidate'
            f'{"s" if len(candidates) != 1 else ""} of {len(words)} word'
            f'{"s" if len(words) != 1 else ""}, {chosen} chosen</summary>'
            f'<ul>{"".join(items)}</ul></details>')


def _threshold(folder: Path) -> float | None:
    """The rule-augment stage's BERTScore threshold, from its manifest (None: none or unknown)."""
    t = (manifest(folder).get("parameters") or {}).get("bertscore_threshold", 0.75)
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def caption_gallery(text_dirs: Iterable[Path], rows: int = 12) -> str:
    """Original captions next to their rule-based and back-translated variants (joined by
    caption_id over the given stage folders), replaced words marked, with each outcome."""
    rule: dict[str, dict] = {}
    back: dict[str, dict] = {}
    label_of: dict[str, str] = {}
    for d in text_dirs:
        kind = manifest(d).get("kind")
        if kind == "rule-augment":
            cols = read_columns(d, ["caption_id", "caption", "augmented", "reason",
                                    "replacements", "label"], optional=["candidates"])
            target = rule
        elif kind == "backtranslate":
            cols = read_columns(d, ["caption_id", "caption", "augmented", "outcome",
                                    "pivot_path", "label"])
            target = back
        else:
            continue
        if not cols:
            continue
        keys = list(cols)
        threshold = _threshold(d) if kind == "rule-augment" else None
        for values in zip(*(cols[k] for k in keys)):
            row = dict(zip(keys, values), threshold=threshold)
            target.setdefault(row["caption_id"], row)  # the first variant of a caption
            label_of.setdefault(row["caption_id"], row.get("label") or "")
    if not rule and not back:
        return ""
    # which captions: with a rule stage, each unchanged outcome a couple of times, the rest
    # changed ones across classes; else back-translations across classes
    base = rule or back
    picked: list[str] = []
    if rule:
        by_reason: dict[str, list[str]] = defaultdict(list)
        for cid, r in rule.items():
            by_reason[r["reason"]].append(cid)
        for reason in sorted(by_reason):
            if reason != "changed":
                picked += by_reason[reason][:2]
        by_class: dict[str, list[str]] = defaultdict(list)
        for cid in by_reason.get("changed", []):
            by_class[label_of[cid]].append(cid)
        picked = _round_robin(by_class, max(rows - len(picked), rows // 2)) + picked
    else:  # back-translations that changed the caption first, across classes
        by_class = defaultdict(list)
        for cid in sorted(base, key=lambda c: base[c]["augmented"] == base[c]["caption"]):
            by_class[label_of[cid]].append(cid)
        picked = _round_robin(by_class, rows)
    head = "<tr><th>caption (class)</th>"
    head += "<th>rule-based (Algorithm 1)</th>" if rule else ""
    head += "<th>back-translated</th>" if back else ""
    body = []
    for cid in picked:
        r, b = rule.get(cid), back.get(cid)
        original = (r or b)["caption"] or ""
        reps = (r or {}).get("replacements") or []
        old = _marked(original, {x["position"]: x["old"] for x in reps}, "old")
        cells = [f'<td class="cap">{old}'
                 f'<div class="reason">{html.escape(label_of.get(cid, ""))} · '
                 f'<code>{html.escape(cid)}</code></div></td>']
        if rule:
            if r is None:
                cells.append("<td>-</td>")
            else:
                scores = "; ".join(f"{x['old']} → {x['new']}: GloVe {x['glove_similarity']:.2f}, "
                                   f"BERTScore {x['bertscore_f1']:.2f}" for x in reps)
                why = RULE_REASONS.get(r["reason"], r["reason"])
                new = _marked(r["augmented"], _new_positions(r["augmented"], reps), "new")
                cells.append(f'<td class="cap">{new}'
                             f'<div class="reason">{html.escape(why)}'
                             f'{"<br>" + html.escape(scores) if scores else ""}</div>'
                             f'{candidate_details(r.get("candidates"), r["threshold"])}</td>')
        if back:
            if b is None:
                cells.append("<td>-</td>")
            else:
                path = " → ".join(b.get("pivot_path") or [])
                cells.append(f'<td class="cap">{html.escape(b["augmented"] or "")}'
                             f'<div class="reason">{html.escape(b["outcome"])}'
                             f'{" · " + html.escape(path) if path else ""}</div></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = ('<mark class="old">replaced</mark> words of the original, <mark class="new">'
              "their replacements</mark> in the rule-based variant (with their GloVe "
              "similarity and BERTScore F1); under a variant, its nouns' and verbs' GloVe "
              "candidates and what became of each (chosen, passed but not chosen, filtered by "
              "part of speech or BERTScore, function word); " if rule else "")
    return ("<h2>Captions and their variants</h2>"
            f'<p class="legend">{legend}under each variant, why it came out as it did.</p>'
            f'<table class="gallery">{head}</tr>{"".join(body)}</table>')


# ---------------------------------------------------------------- image views

def view_gallery(image_dirs: Sequence[tuple[str, Path]], per_class: int = 1,
                 max_views: int = 3) -> str:
    """For a few images per class: the clean view 0, then views 1..K of every setup (one
    augment-images stage each, with the name to show)."""
    from duchkit.augment.image_ops import apply_spec
    from duchkit.augment.view_spec import ViewSpec
    from duchkit.pipelines.stages.augment_images import BadImage, read_image

    setups = []
    for title, d in image_dirs:
        cols = read_columns(d, ["image_id", "image_path", "label", "view_index", "view_spec"])
        if not cols:
            continue
        crop = int((manifest(d).get("parameters") or {}).get("crop", 200))
        specs: dict[str, dict[int, str]] = defaultdict(dict)
        info: dict[str, tuple[str, str]] = {}
        for iid, path, label, v, spec in zip(*(cols[k] for k in cols)):
            specs[iid].setdefault(int(v), spec)
            info.setdefault(iid, (path, label or ""))
        setups.append((title, crop, specs, info))
    if not setups:
        return ""
    # the images: the first `per_class` of each class, in the first stage's order
    first = setups[0][3]
    by_class: dict[str, list[str]] = defaultdict(list)
    for iid, (_, label) in first.items():
        if len(by_class[label]) < per_class:
            by_class[label].append(iid)
    images = [iid for label in sorted(by_class) for iid in by_class[label]]
    cards = []
    decoded: dict[tuple[str, int], object] = {}
    for iid in images:
        path, label = first[iid]
        clean = ""
        row = []
        for title, crop, specs, info in setups:
            if iid not in specs:
                continue
            try:
                if (iid, crop) not in decoded:
                    decoded[(iid, crop)] = read_image(info[iid][0], iid, crop)
                pixels = decoded[(iid, crop)].pixels
                thumbs = []
                for v in sorted(specs[iid]):
                    spec = ViewSpec.from_json(specs[iid][v])
                    if v == 0:
                        clean = clean or _img(jpeg_uri(apply_spec(pixels, spec)),
                                              f"{iid} view 0")
                    elif len(thumbs) < max_views:
                        thumbs.append(_img(jpeg_uri(apply_spec(pixels, spec)),
                                           f"{iid} {title} view {v}"))
                body = "".join(thumbs) if thumbs else '<span class="reason">= view 0</span>'
            except (BadImage, OSError, ValueError) as exc:
                body = f'<span class="reason">{html.escape(str(exc))}</span>'
            row.append(f'<figure><figcaption>{html.escape(title)}</figcaption>'
                       f'<div class="hits">{body}</div></figure>')
        cards.append(f'<div class="card"><div class="reason">{html.escape(label)} · '
                     f'<code>{html.escape(iid)}</code></div><div class="hits">'
                     f'<figure><figcaption>view 0 (clean)</figcaption>{clean}</figure>'
                     + "".join(row) + "</div></div>")
    return ("<h2>Image views</h2>"
            '<p class="legend">View 0 is the clean centre crop every setup shares; after it, '
            "the views each setup pairs with it in training (NoAugmentation: the whole, "
            "uncropped image).</p>"
            f'<div class="cards">{"".join(cards)}</div>')


# ---------------------------------------------------------------- retrieval

def _stage_rows(folder: Path, columns: Sequence[str]) -> dict[str, list]:
    return read_columns(folder, columns) if folder and Path(folder).is_dir() else {}


def retrieval_gallery(run: Path, queries: int = 3, k: int = 10, title: str = "") -> str:
    """For `queries` query items per direction (I→T, T→I; of distinct classes), the top-k
    database items by Hamming distance, relevant ones (same class) framed green."""
    from duchkit.hashing.retrieval import search
    from duchkit.pipelines.run_folder import read_run_info
    from duchkit.pipelines.search import load_index

    run = Path(run)
    info = read_run_info(run) or {}
    inputs = info.get("inputs") or {}
    try:
        images, captions = load_index(run, "images"), load_index(run, "captions")
    except Exception:  # noqa: BLE001  (not a run folder with codes: nothing to show)
        return ""
    img_rows = _stage_rows(Path(inputs.get("images", "")), ["image_id", "image_path"])
    path_of = dict(zip(img_rows.get("image_id", []), img_rows.get("image_path", [])))
    cap_rows = _stage_rows(Path(inputs.get("texts", "")), ["caption_id", "caption"])
    text_of: dict[str, str] = {}
    for cid, text in zip(cap_rows.get("caption_id", []), cap_rows.get("caption", [])):
        text_of.setdefault(cid, text)
    thumbs: dict[str, str] = {}

    def thumb(iid: str) -> str:
        if iid not in thumbs:
            thumbs[iid] = file_thumb(path_of.get(iid, ""), iid) if iid in path_of else ""
        return _img(thumbs[iid], iid) if thumbs[iid] else f"<code>{html.escape(iid)}</code>"

    def show(index, i: int, modality: str) -> str:
        if modality == "image":
            return thumb(index.image_id[i])
        cid = index.caption_id[i]
        return html.escape(text_of.get(cid, cid or ""))

    sections = []
    for name, (q_index, q_mod, d_index, d_mod) in {
            "I→T": (images, "image", captions, "text"),
            "T→I": (captions, "text", images, "image")}.items():
        q = [i for i, s in enumerate(q_index.split) if s == "query"]
        d = np.array([i for i, s in enumerate(d_index.split) if s == "retrieval"])
        if not q or not len(d):
            continue
        chosen, seen = [], set()
        for i in q:  # queries of distinct classes, in split order
            if q_index.label[i] not in seen:
                seen.add(q_index.label[i])
                chosen.append(i)
            if len(chosen) == queries:
                break
        idx, dist = search(q_index.packed[chosen], d_index.packed[d], k)
        rows = []
        for qi, hits, dists in zip(chosen, idx, dist):
            label = q_index.label[qi]
            cells = []
            for rank, (h, dd) in enumerate(zip(hits, dists), 1):
                j = int(d[h])
                rel = d_index.label[j] == label and label is not None
                tip = html.escape(str(d_index.label[j]))
                cells.append(f'<div class="hit{" rel" if rel else ""}" title="{tip}">'
                             f'<span class="rank">{rank}</span> ({int(dd)}) '
                             f'{show(d_index, j, d_mod)}</div>')
            n_rel = sum(d_index.label[int(d[h])] == label for h in hits)
            rows.append(f'<tr><td class="query">{show(q_index, qi, q_mod)}'
                        f'<div class="reason">{html.escape(str(label))}: {n_rel}/{len(hits)} '
                        f'relevant</div></td><td><div class="hits">{"".join(cells)}</div></td></tr>')
        sections.append(f"<h3>{name}</h3><table class=\"gallery\"><tr><th>query</th>"
                        f"<th>top {k} (rank, Hamming distance); green = same class</th></tr>"
                        + "".join(rows) + "</table>")
    if not sections:
        return ""
    bits = images.bits
    head = f"<h2>Retrieval{': ' + html.escape(title) if title else ''} ({bits} bits)</h2>"
    return head + ('<p class="legend">Queries from the query split, database the retrieval '
                   "split; ties in Hamming distance go to the lower database index.</p>"
                   + "".join(sections))


# ---------------------------------------------------------------- any folder

def folder_galleries(root: Path, runs: bool = True) -> list[str]:
    """The galleries of whatever `root` holds: stage folders (captions, image views), a run
    folder (retrieval), a study's run folders (retrieval of the first run found; `runs=False`:
    none)."""
    root = Path(root)
    dirs = [root] if (root / MANIFEST).is_file() else sorted(
        p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    kinds = {d: manifest(d).get("kind") for d in dirs}
    out = []
    text = [d for d, k in kinds.items() if k in ("rule-augment", "backtranslate")]
    if text:
        out.append(caption_gallery(text))
    views = [(f"{d.name}: {(manifest(d).get('parameters') or {}).get('augmentation', '')}", d)
             for d, k in kinds.items() if k == "augment-images"]
    if views:
        out.append(view_gallery(views))
    found = [root] if (root / "codes").is_dir() else sorted(
        p.parent.parent for p in root.glob("**/codes/" + MANIFEST))[:1]
    for run in found if runs else []:
        out.append(retrieval_gallery(run, title=str(run.relative_to(root)) if run != root
                                     else run.name))
    return [g for g in out if g]
