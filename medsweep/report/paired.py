"""Paired significance on the same evaluation items: the sign-flip (approximate randomization) test of a mean
per-item difference, its bias-corrected and accelerated (BCa) bootstrap interval, and Holm's step-down adjustment
of a family of p-values.

The default test is approximate randomization (Noreen 1989): under the null hypothesis that the two systems are
exchangeable on every item, each per-item difference is as likely to carry either sign, so the null distribution
of the mean difference is that of the means of the differences with random signs. With n items and at most
``N_RESAMPLES`` sign vectors the whole distribution is enumerated and the p-value is exact; otherwise it is sampled
and counted as (hits + 1) / (resamples + 1), which keeps the test valid (Phipson & Smyth 2010). A paired bootstrap
p-value has to recentre the resampled differences on the null, and it was found to reject true nulls more often
than approximate randomization (Riezler & Maxwell 2005, on MT evaluation); the bootstrap is used where it fits, for
the interval of the difference, about which the sign-flip null says nothing.

Seeds: each side's scores are averaged over its seeds per item, then items are tested. With the 2 to 5 seeds of a
sweep, the seed level of a two-level bootstrap has 3 to 126 distinct resamples, too few to estimate a seed variance
component, while averaging keeps the pairing by item and lowers the per-item noise. The test then generalises over
items at the trained seeds; the spread between seeds is what the tables' t interval over seeds shows.

The sign flips are one matrix product per item count in numpy, shared by the comparisons of a table;
scipy.stats.permutation_test computes the same p-values (the tests check it) but, built for any statistic, it
resamples index arrays for each test, which a table of many comparisons pays many times over.

Every random draw comes from ``numpy.random.default_rng(seed)`` (``RNG_SEED`` unless told), the same for every
comparison, so a report is reproduced exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 10_000
RNG_SEED = 0
ALPHA = 0.05
CONFIDENCE = 0.95
# The null distribution is evaluated in blocks of sign vectors of about this many entries, so that a held-out set
# of thousands of items does not need a resamples × items matrix in memory.
_BLOCK = 1 << 22


@dataclass(frozen=True)
class Paired:
    """One paired comparison: mean difference (B − A) over the items, its interval, the test's p-value."""

    diff: float
    low: float
    high: float
    p: float
    n: int  # items compared (both scores present)
    exact: bool  # p from all 2^n sign vectors


def _signs(n: int, start: int, count: int, rng: np.random.Generator | None) -> np.ndarray:
    """``count`` sign vectors of length n: numbers start, start + 1, ... of the 2^n in binary when rng is None,
    random ones otherwise."""
    if rng is None:
        bits = (np.arange(start, start + count)[:, None] >> np.arange(n)) & 1
        return (1 - 2 * bits).astype(float)
    return (1 - 2 * rng.integers(0, 2, size=(count, n))).astype(float)


def sign_flip_p(diffs: Sequence[Sequence[float] | np.ndarray] | np.ndarray, n_resamples: int = N_RESAMPLES,
                seed: int = RNG_SEED) -> np.ndarray:
    """Two-sided p-values of mean(d) = 0 by the sign-flip test, one per row of per-item differences.

    Rows may have different lengths (NaN entries are left out); rows of one length share their sign vectors,
    drawn from ``default_rng(seed)``, so one comparison's p-value does not depend on the others. Exact when
    2^n <= ``n_resamples``; a row without items gets NaN.
    """
    rows = [np.asarray(d, dtype=float) for d in diffs]
    rows = [d[~np.isnan(d)] for d in rows]
    p = np.full(len(rows), math.nan)
    for n in sorted({len(d) for d in rows if len(d)}):
        at = [i for i, d in enumerate(rows) if len(d) == n]
        block = np.stack([rows[i] for i in at], axis=1)  # n × k
        observed = np.abs(block.mean(axis=0))
        # the identity sign vector must count as "as extreme" despite summation-order rounding
        tol = 1e-9 * np.abs(block).mean(axis=0)
        exact = 2 ** n <= n_resamples
        total = 2 ** n if exact else n_resamples
        rng = None if exact else np.random.default_rng(seed)
        hits = np.zeros(len(at))
        step = max(1, _BLOCK // n)
        for start in range(0, total, step):
            count = min(step, total - start)
            hits += (np.abs(_signs(n, start, count, rng) @ block / n) >= observed - tol).sum(axis=0)
        p[at] = hits / total if exact else (hits + 1) / (total + 1)
    return p


def paired_interval(diffs, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high): scipy's BCa bootstrap interval of the mean per-item difference (NaN entries left out).

    Differences that are all equal have no spread: the interval is that value. Where BCa is undefined (its
    acceleration needs a jackknife spread) the percentile interval of the same resamples is used.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return math.nan, math.nan
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    from scipy.stats import bootstrap  # on use: scipy.stats takes a noticeable share of a second to import

    kwargs = dict(n_resamples=n_resamples, confidence_level=confidence, vectorized=True)
    ci = bootstrap((d,), np.mean, method="BCa", rng=np.random.default_rng(seed), **kwargs).confidence_interval
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        ci = bootstrap((d,), np.mean, method="percentile", rng=np.random.default_rng(seed),
                       **kwargs).confidence_interval
    return float(ci.low), float(ci.high)


def paired_test(a, b, n_resamples: int = N_RESAMPLES, seed: int = RNG_SEED) -> Paired:
    """Compare per-item scores ``b`` with ``a`` (the same items in the same order): B − A."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    d = d[~np.isnan(d)]
    p = float(sign_flip_p([d], n_resamples, seed)[0])
    low, high = paired_interval(d, n_resamples, seed)
    return Paired(float(d.mean()) if len(d) else math.nan, low, high, p, len(d), 2 ** len(d) <= n_resamples)


def holm(pvalues) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: reject the hypotheses whose adjusted p is below alpha.

    Sorted ascending, the i-th smallest of m p-values (i from 0) is multiplied by m − i, the running maximum keeps
    the adjusted values in order, and they are capped at 1. NaN (an untested comparison) is not counted in m and
    stays NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out
