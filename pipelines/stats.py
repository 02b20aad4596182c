"""The numbers a study report gives per cell: mean ± std over seeds, and the paired difference
to a reference cell with a 95% t-interval.

    d = paired_difference({0: .81, 1: .84, 2: .80}, {0: .78, 1: .80, 2: .79})
    d.mean, d.low, d.high, d.real          # real: the interval excludes 0

Pairs are formed by seed: a study's seed fixes the split (which images train, query and
retrieve) and every other random draw, so the difference of two cells at one seed removes
what the split alone does to both. The interval is Student's t over those per-seed
differences (n - 1 degrees of freedom); with one seed there is none.

No dependency beyond the standard library and numpy: the t quantile is found by bisection on
the t distribution function (Newton's method), itself Simpson's rule over the density.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95


def _t_density(x: float, df: float) -> float:
    log_c = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi))
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: float, steps: int = 4000) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom."""
    if x == 0:
        return 0.5
    a = abs(x)
    h = a / steps
    s = _t_density(0.0, df) + _t_density(a, df)
    s += 4 * sum(_t_density((2 * i - 1) * h, df) for i in range(1, steps // 2 + 1))
    s += 2 * sum(_t_density(2 * i * h, df) for i in range(1, steps // 2))
    half = min(s * h / 3, 0.5)
    return 0.5 + half if x > 0 else 0.5 - half


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p (0.5 < p < 1), e.g. t_quantile(0.975, 2) = 4.303. Newton's
    method from 0: the distribution function is concave on x > 0, so the steps rise to the
    root without overshooting it."""
    if not 0.5 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0 (got p={p}, df={df})")
    x = 0.0
    for _ in range(200):
        step = (p - t_cdf(x, df)) / _t_density(x, df)
        x += step
        if step < 1e-10 * max(1.0, x):
            break
    return x


@dataclass(frozen=True)
class PairedDifference:
    """cell - reference over the seeds both have: mean, std of the per-seed differences and
    the t-interval of the mean (None with fewer than two seeds)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float = CONFIDENCE

    @property
    def real(self) -> bool:
        """The interval excludes 0: the difference is larger than the seeds' noise."""
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> PairedDifference | None:
    """The difference values - reference, paired by seed; None when no seed is common."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    d = np.array([values[s] - reference[s] for s in seeds], dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return PairedDifference(1, mean, None, None, None, confidence)
    std = float(d.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, len(d) - 1) * std / math.sqrt(len(d))
    return PairedDifference(len(d), mean, std, mean - half, mean + half, confidence)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1); std None for one value, both None for none."""
    if len(values) == 0:
        return None, None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def format_mean_std(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def format_difference(d: PairedDifference | None) -> str:
    """"+0.031 [+0.012, +0.050]", in bold (Markdown) when the difference is real."""
    if d is None:
        return "-"
    if d.low is None:
        return f"{_signed(d.mean)} (1 seed, no interval)"
    text = f"{_signed(d.mean)} [{_signed(d.low)}, {_signed(d.high)}]"
    return f"**{text}**" if d.real else text
