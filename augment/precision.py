"""Reduced-precision inference, one rule for every model-backed step (encoders, BERTScore).

fp16/bf16 autocast on CUDA ('auto' = fp16). On the CPU, fp32 unless bf16 is asked for: CPUs with
AMX run bf16 matmuls several times faster, most others slower, and bf16 moves embeddings slightly
(cosine ~0.999 to fp32), so it is the user's call, never a silent default. fp16 is CUDA-only."""
from __future__ import annotations

import contextlib

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def autocast(device: str, precision: str):
    import torch

    if precision == "fp32" or (device != "cuda" and precision != "bf16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda" if device == "cuda" else "cpu", dtype=dtype)
