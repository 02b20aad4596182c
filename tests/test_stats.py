"""The numbers of a study report: the t quantile, the paired difference and its interval, and
how they read."""
from __future__ import annotations

import math

import numpy as np
import pytest

from duchkit.pipelines.stats import (format_difference, format_mean_std, mean_std,
                                     paired_difference, t_cdf, t_quantile)

# Student's t, 0.975 quantile (two-sided 95%), from the printed tables
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045}


@pytest.mark.parametrize("df,value", sorted(T975.items()))
def test_t_quantile_matches_the_tables(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)


def test_t_quantile_against_scipy_when_present():
    st = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 30, 200):
        for p in (0.8, 0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(st.t.ppf(p, df), rel=1e-6)
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)


def test_paired_difference_is_a_t_interval_over_the_common_seeds():
    cell = {0: 0.81, 1: 0.84, 2: 0.80, 7: 0.5}      # seed 7 has no partner: left out
    ref = {0: 0.78, 1: 0.80, 2: 0.79, 3: 0.9}
    d = paired_difference(cell, ref)
    diffs = np.array([0.03, 0.04, 0.01])
    half = 4.303 * diffs.std(ddof=1) / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(diffs.mean())
    assert d.std == pytest.approx(diffs.std(ddof=1))
    assert d.low == pytest.approx(diffs.mean() - half, abs=1e-4)
    assert d.high == pytest.approx(diffs.mean() + half, abs=1e-4)
    assert not d.real  # [-0.011, +0.065] holds 0: within the seeds' noise


def test_a_consistent_difference_is_real_and_pairing_removes_the_split_noise():
    # the split moves both cells by up to .2 (unpaired: std .1), the cell is .03 above its
    # reference at every seed: paired, that is a real difference
    split = {s: 0.2 * math.sin(s) for s in range(5)}
    ref = {s: 0.6 + split[s] for s in range(5)}
    cell = {s: 0.63 + split[s] + 0.002 * (-1) ** s for s in range(5)}
    d = paired_difference(cell, ref)
    assert d.real and d.low > 0.02 and d.high < 0.04
    assert mean_std(list(cell.values()))[1] > 0.1  # each cell alone is noisy
    assert format_difference(d).startswith("**+0.03") and format_difference(d).endswith("]**")
    worse = paired_difference(ref, cell)
    assert worse.real and worse.high < 0 and format_difference(worse).startswith("**−0.03")


def test_one_seed_has_no_interval_and_no_seed_no_difference():
    d = paired_difference({0: 0.8}, {0: 0.7})
    assert d.n == 1 and d.low is None and not d.real
    assert format_difference(d) == "+0.100 (1 seed, no interval)"
    assert paired_difference({0: 0.8}, {1: 0.7}) is None and format_difference(None) == "-"


def test_mean_std_format():
    assert format_mean_std([]) == "-"
    assert format_mean_std([0.5]) == "0.500"
    assert format_mean_std([0.5, 0.7]) == "0.600 ± 0.141"
