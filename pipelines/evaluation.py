"""Score a trained run's codes: mAP@K and P@K in every direction, written beside the run.

    results = evaluate_run(Path("runs/a"), variant="standard", k=20, relevance="class")

The run's own evaluation is metrics.json; any other setting writes files with a suffix that
names it, so it never overwrites the run's own results.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from duchkit.pipelines.run_folder import CODES, RUN_JSON, read_run_info
from duchkit.pipelines.stage import ConfigError


def one_caption_rows(t: pa.Table, seed: int, where: Path) -> np.ndarray:
    """Mask of the code rows the paper's one-caption protocol keeps: every image, and of each
    image's captions (in the order train wrote them) the one `paper_caption_choice` draws for
    `seed`, the caption a `--captions-per-image 1` run of that seed trains and is scored on."""
    from duchkit.hashing.data import paper_caption_choice

    item = np.asarray(t.column("item").to_pylist(), dtype=object)
    image_id = np.asarray(t.column("image_id").to_pylist(), dtype=object)
    images = image_id[item == "image"]
    of = {name: i for i, name in enumerate(images)}
    cap_rows = np.flatnonzero(item == "caption")
    owner = np.array([of.get(name, -1) for name in image_id[cap_rows]], dtype=np.int64)
    if (owner < 0).any():
        raise ConfigError(f"duchkit evaluate: {where}: caption rows of an image with no image "
                          "row; the codes are not a run's of duchkit train")
    per_image = np.bincount(owner, minlength=len(images))
    if per_image.min() != per_image.max():
        raise ConfigError(f"duchkit evaluate: {where}: images have {per_image.min()} to "
                          f"{per_image.max()} captions; --captions one needs the same number "
                          "for every image")
    # position of each caption row among its image's captions, in table order
    order = np.argsort(owner, kind="stable")
    slot = np.empty(len(owner), dtype=np.int64)
    slot[order] = np.arange(len(owner)) - np.repeat(np.cumsum(per_image) - per_image, per_image)
    keep = item == "image"
    pick = paper_caption_choice(len(images), int(per_image[0]), seed)
    keep[cap_rows[slot == pick[owner]]] = True
    return keep


def evaluate_run(run: Path, variant: str, k: int, relevance: str, echo: bool = True,
                 captions: str = "all") -> dict:
    from duchkit.hashing.config import MAP_VARIANTS
    from duchkit.hashing.evaluate import evaluate_codes, markdown_table, plot_pk
    from duchkit.pipelines.store import StageStore, atomic_write_bytes, atomic_write_json

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"duchkit evaluate: --k must be an integer >= 1, not {k!r}")
    if variant not in MAP_VARIANTS:
        raise ConfigError(f"duchkit evaluate: --map-variant must be one of {MAP_VARIANTS}")
    if relevance not in ("class", "pair") or captions not in ("all", "one"):
        raise ConfigError(f"duchkit evaluate: relevance {relevance!r} / captions {captions!r}: "
                          "expected class|pair and all|one")
    run = Path(run)
    store = StageStore(run / CODES)
    if not store.is_complete():
        raise ConfigError(f"duchkit evaluate: {run} has no {CODES}/ folder: is it a run folder "
                          "of duchkit train?")
    t = store.read_all()
    info = read_run_info(run)
    # a run trained on one caption per image coded only that one: --captions one keeps them all
    one_caption_run = info is not None and info["config"]["captions_per_image"] == 1
    one_of_all = captions == "one" and not one_caption_run
    if one_of_all:
        if info is None:
            raise ConfigError(f"duchkit evaluate: --captions one needs {run / RUN_JSON} (the "
                              "run's seed picks the caption of each image)")
        t = t.filter(pa.array(one_caption_rows(t, info["config"]["seed"], run / CODES)))
    item = np.asarray(t.column("item").to_pylist(), dtype=object)
    codes_all = np.asarray(t.column("code").combine_chunks().flatten().to_numpy(),
                           np.uint8).reshape(t.num_rows, -1)
    if relevance == "class":
        labels = t.column("label").to_pylist()
        if any(lab is None for lab in labels):
            raise ConfigError(f"duchkit evaluate: {sum(lab is None for lab in labels)} item(s) of "
                              f"{run / CODES} have no class label, so class-label mAP cannot be "
                              "computed; use --relevance pair (caption and its image)")
        key = np.asarray(labels, dtype=object)
    else:
        key = np.asarray(t.column("image_id").to_pylist(), dtype=object)
    _, key = np.unique(key.astype(str), return_inverse=True)
    split = np.asarray(t.column("split").to_pylist(), dtype=object)
    sel = {"image": item == "image", "text": item == "caption"}
    results = evaluate_codes({m: codes_all[s] for m, s in sel.items()},
                             {m: key[s] for m, s in sel.items()},
                             {m: split[s] for m, s in sel.items()}, k, variant)
    bits = codes_all.shape[1] * 8
    run_relevance = "class"
    if info is not None and not info["has_labels"]:
        run_relevance = "pair"
    # the run's own evaluation (the one train wrote) is metrics.json; any other setting gets a
    # suffix that names it, so it never overwrites the run's own results
    own_k = (info or {}).get("config", {}).get("map_k", 20)
    own = (variant, relevance, k) == ("standard", run_relevance, own_k) and not one_of_all
    suffix = "" if own else f"-{variant}-{relevance}"
    if k != own_k:
        suffix += f"-k{k}"
    method = (info or {}).get("config", {}).get("method", "duch").upper()  # DJSRH, JDSH runs
    title = f"{method} {bits} bits, {relevance} relevance"
    if one_of_all:
        suffix, title = suffix + "-one-caption", title + ", one caption per image"
    atomic_write_json(run / f"metrics{suffix}.json", {
        "bits": bits, "k": k, "variant": variant, "relevance": relevance,
        "captions": "one per image (paper protocol)" if captions == "one" or one_caption_run
                    else "all",
        "tie_rule": "equal Hamming distance: lower retrieval index first", "results": results})
    atomic_write_bytes(run / f"metrics{suffix}.md", markdown_table(results, title).encode())
    plot_pk(results, run / f"pk_curve{suffix}.png", title)
    if echo:
        print(markdown_table(results, title))
        print(f"wrote {run / f'metrics{suffix}.json'}, .md and pk_curve{suffix}.png")
    return results


