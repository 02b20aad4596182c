"""Image views for an encoder in this process: each view recomputed from its spec (read, decode,
augment, resize) by DataLoader workers while this process runs the encoder, so decoding
overlaps inference. Also the device defaults the image encoders share."""
from __future__ import annotations

import contextlib
import os

import numpy as np

from duchkit.pipelines.engines import report_rows


def default_loader_workers(device: str) -> int:
    """CUDA: all cores but one decode: the GPU encodes far faster than a core decodes. CPU: the
    encoder is the bottleneck (a view costs it an order of magnitude more than decoding and
    augmenting it), so one worker per 16 cores feeds it and the rest run the encoder."""
    cores = os.cpu_count() or 2
    if device == "cuda":
        return max(1, min(32, cores - 1))
    return max(1, cores // 16)


def default_batch_size(device: str) -> int:
    """CUDA: large batches. CPU: small ones, whose activations stay in the cache (larger
    batches cost more per view)."""
    return 256 if device == "cuda" else 4


class ViewDataset:
    """One item per image: all its views, decoded once and replayed from their specs."""

    def __init__(self, paths: list[str], image_ids: list[str], specs: list[list[str]],
                 input_size: int):
        self.paths, self.image_ids, self.specs = paths, image_ids, specs
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        from duchkit.augment.image_ops import apply_spec, resize
        from duchkit.augment.view_spec import ViewSpec
        from duchkit.pipelines.stages.augment_images import BadImage, read_image

        views = [ViewSpec.from_json(s) for s in self.specs[i]]
        min_side = max(int(op["size"]) for v in views for op in v.ops if op["op"] == "crop") \
            if any(op["op"] == "crop" for v in views for op in v.ops) else 0
        image = read_image(self.paths[i], self.image_ids[i], min_side)
        try:
            return np.stack([resize(apply_spec(image.pixels, v), self.input_size) for v in views])
        except ValueError as exc:
            raise BadImage(f"image {self.image_ids[i]!r} ({self.paths[i]}): {exc}") from exc


def _collate(items: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.concatenate(items))


@contextlib.contextmanager
def _cpu_threads_beside(workers: int):
    """On the CPU, the encoder's intra-op threads and the decoding workers share the cores:
    oversubscribing them makes every OpenMP barrier wait for a descheduled thread."""
    import torch

    before = torch.get_num_threads()
    if workers:
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def loader_context():
    """Worker processes come from a forkserver, not a fork of this process: forking a process
    whose OpenCV/OpenMP thread pools have run can deadlock the child. The server preloads what
    the workers run once, so each worker starts fast."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([
        "duchkit.pipelines.forkserver_guard",  # first: the server ends with the run
        "duchkit.augment.image_ops",  # before albumentations: it turns off its update check
        "albumentations",  # the pixel ops import it (and torch) on first use
        "duchkit.augment.view_spec",
        "duchkit.pipelines.stages.augment_images", "duchkit.pipelines.view_loader",
        "duchkit.pipelines.encoder_pool", "duchkit.pipelines.stages.embed"])
    return ctx


def _worker_init(_: int) -> None:
    import cv2

    from duchkit.pipelines.worker_guard import die_with_parent

    die_with_parent()
    cv2.setNumThreads(1)  # one decoding process per core; no nested thread pools


def encode_in_process(dataset: ViewDataset, enc, device: str, precision: str, batch_size: int,
                      loader_workers: int, n_views: int) -> np.ndarray:
    """The encoder in this process, DataLoader workers decoding beside it; -1 for
    `batch_size` or `loader_workers`: the device's default."""
    from torch.utils.data import DataLoader

    views_per_image = max(1, round(n_views / max(1, len(dataset))))
    workers = default_loader_workers(device) if loader_workers == -1 else loader_workers
    workers = min(workers, len(dataset))
    batch = default_batch_size(device) if batch_size == -1 else batch_size
    loader = DataLoader(dataset, batch_size=max(1, batch // views_per_image),
                        num_workers=workers, collate_fn=_collate,
                        pin_memory=device == "cuda", worker_init_fn=_worker_init,
                        prefetch_factor=4 if workers else None,
                        multiprocessing_context=loader_context() if workers else None)
    out = []
    with _cpu_threads_beside(workers if device == "cpu" else 0):
        for b in loader:
            out.append(enc.encode(b, device, precision))
            report_rows(len(out[-1]))
    return np.concatenate(out)
