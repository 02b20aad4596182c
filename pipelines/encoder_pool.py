"""CPU data parallelism for image encoding: encoder processes, each decoding and encoding whole
chunks of images with one intra-op thread."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from duchkit.pipelines.engines import report_rows
from duchkit.pipelines.view_loader import ViewDataset, default_batch_size, loader_context

if TYPE_CHECKING:
    from duchkit.pipelines.stages.embed import EmbedImages


def default_encoder_procs(device: str) -> int:
    """CPU: one encoder process per core, each with one intra-op thread, decoding its own images
    in between batches. The encoder is the bottleneck and decoding a small part of a view's
    cost, so a dedicated decoding worker would idle most of a core; and one process with many
    threads pays an OpenMP barrier per layer on small batches. CUDA: one process feeds the GPU."""
    return 1 if device == "cuda" else max(1, os.cpu_count() or 1)


_PROC: dict = {}  # this pool process's encoder


def _proc_init(stage: EmbedImages) -> None:
    import cv2
    import torch

    from duchkit.pipelines.worker_guard import die_with_parent

    die_with_parent()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    enc = _PROC["encoder"] = stage.encoder().to("cpu")
    if getattr(stage, "runtime", "torch") != "torch":
        # compile the runtime's model for this process's one thread now (set-up, not shard work)
        enc.encode(np.zeros((1, enc.input_size, enc.input_size, 3), np.uint8), "cpu",
                   stage.precision)


def _proc_encode(dataset: ViewDataset, precision: str, batch: int) -> np.ndarray:
    import torch

    enc = _PROC["encoder"]
    out = []
    views = [dataset[i] for i in range(len(dataset))]
    flat = np.concatenate(views)
    for i in range(0, len(flat), batch):
        out.append(enc.encode(torch.from_numpy(flat[i:i + batch]), "cpu", precision))
    return np.concatenate(out)


def _noop(_: int) -> None:
    import time

    time.sleep(0.05)  # long enough that every process of the pool picks one


class EncoderPool:
    """`procs` processes from a forkserver, each holding its own encoder (loaded once, when the
    stage is set up, like the single-process encoder) and running one intra-op thread. A shard's
    images go out in chunks of CHUNK images, so the processes stay evenly loaded; results come
    back in input order."""

    CHUNK = 32

    def __init__(self, stage: EmbedImages, procs: int):
        import weakref
        from concurrent.futures import ProcessPoolExecutor

        self.procs, self.chunk = procs, self.CHUNK
        self.executor = ProcessPoolExecutor(procs, mp_context=loader_context(),
                                            initializer=_proc_init, initargs=(stage,))
        # load the encoders now (model loading is set-up, not shard work)
        list(self.executor.map(_noop, range(procs)))
        weakref.finalize(self, self.executor.shutdown, wait=False, cancel_futures=True)

    def encode(self, dataset: ViewDataset, precision: str, batch_size: int) -> np.ndarray:
        batch = default_batch_size("cpu") if batch_size == -1 else batch_size
        c = self.chunk
        chunks = [ViewDataset(dataset.paths[i:i + c], dataset.image_ids[i:i + c],
                              dataset.specs[i:i + c], dataset.input_size)
                  for i in range(0, len(dataset), c)]
        futures = [self.executor.submit(_proc_encode, c, precision, batch) for c in chunks]
        out = []
        for f in futures:  # in input order; the progress bar moves per chunk, not per shard
            out.append(f.result())
            report_rows(len(out[-1]))
        return np.concatenate(out)
