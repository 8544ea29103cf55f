"""Paired significance in the report: the sign-flip test, Holm's adjustment and the bootstrap interval against
textbook cases computed here independently of the code, the best/tied marks of the tables on constructed sweeps,
and ``medsweep-report --compare`` (offline, fast)."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import numpy as np
import pytest

from medsweep import report
from medsweep.report import paired as paired_mod

N = 12  # items: 2^12 sign vectors <= N_RESAMPLES, so the code's p is exact and can be enumerated here


def enumerated_p(diffs) -> float:
    """Two-sided sign-flip p-value by listing every sign vector (the textbook definition)."""
    d = [float(x) for x in diffs]
    observed = abs(statistics.fmean(d))
    hits = sum(abs(statistics.fmean(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


def binomial_two_sided(k: int, n: int) -> float:
    """P(|2K - n| >= |2k - n|) for K ~ Binomial(n, 1/2): the sign-flip p of k differences +1 and n - k of -1."""
    return sum(math.comb(n, j) for j in range(n + 1) if abs(2 * j - n) >= abs(2 * k - n)) / 2 ** n


# ------------------------------------------------------------------------- the sign-flip test

def test_sign_flip_p_is_the_enumerated_p():
    d = [0.31, -0.05, 0.12, 0.4, 0.07, -0.2, 0.33, 0.05]
    assert report.sign_flip_p([d])[0] == enumerated_p(d)  # exact: all 2^8 vectors, no randomness
    ties = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0, 0.0, 1.0]  # EM-like differences with zeros
    assert report.sign_flip_p([ties])[0] == enumerated_p(ties)


def test_sign_flip_on_plus_minus_one_is_the_binomial_test():
    # 8 of 10 items better, 2 worse: p = P(K >= 8) + P(K <= 2) = 2 * 56 / 1024
    assert report.sign_flip_p([[1.0] * 8 + [-1.0] * 2])[0] == 112 / 1024 == binomial_two_sided(8, 10)
    # 15 of 20: 2^20 > 10,000 sign vectors are sampled; within 3 standard errors of the exact 0.0414
    exact = binomial_two_sided(15, 20)
    sampled = report.sign_flip_p([[1.0] * 15 + [-1.0] * 5])[0]
    assert exact == pytest.approx(0.041389, abs=1e-6)
    assert abs(sampled - exact) < 3 * math.sqrt(exact * (1 - exact) / report.N_RESAMPLES)
    # enumerating all 2^20 (n_resamples raised) gives the exact value
    assert report.sign_flip_p([[1.0] * 15 + [-1.0] * 5], n_resamples=2 ** 20)[0] == exact


def test_sign_flip_agrees_with_scipy_permutation_test():
    from scipy.stats import permutation_test

    d = np.random.default_rng(3).normal(0.1, 0.3, 11)
    res = permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=report.N_RESAMPLES)
    assert report.sign_flip_p([d])[0] == pytest.approx(res.pvalue, abs=1e-12)  # both exact: 2^11 vectors


def test_sign_flip_is_deterministic_and_each_row_its_own_test():
    rng = np.random.default_rng(0)
    rows = [rng.normal(0.05, 0.3, 48), rng.normal(0, 0.3, 48), rng.normal(0.2, 0.3, 30)]
    together = report.sign_flip_p(rows)
    assert together.tolist() == report.sign_flip_p(rows).tolist()
    assert [report.sign_flip_p([r])[0] for r in rows] == together.tolist()  # the others change nothing
    assert report.sign_flip_p([rows[0]], seed=1)[0] != together[0]  # the seed is the only randomness


def test_sign_flip_edge_cases():
    p = report.sign_flip_p([[0.0, 0.0, 0.0], [], [0.5], [math.nan, 0.3, 0.3, math.nan]])
    assert p[0] == 1.0 and math.isnan(p[1]) and p[2] == 1.0  # no difference, no items, one item
    assert p[3] == enumerated_p([0.3, 0.3]) == 0.5  # NaN entries left out


# ------------------------------------------------------------------------- Holm

def test_holm_on_the_textbook_example():
    # Wikipedia's Holm–Bonferroni example: p = 0.01, 0.04, 0.03, 0.005 at alpha = 0.05 rejects H1 and H4:
    # 0.005 < 0.05/4, 0.01 < 0.05/3, then 0.03 >= 0.05/2 stops.
    adjusted = report.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert (adjusted < 0.05).tolist() == [True, False, False, True]


def step_down(pvalues, alpha) -> set[int]:
    """Holm's procedure as stated: reject in ascending order while p_(i) < alpha / (m - i)."""
    rejected: set[int] = set()
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    for i, k in enumerate(order):
        if pvalues[k] >= alpha / (len(pvalues) - i):
            break
        rejected.add(k)
    return rejected


def test_holm_adjusted_p_rejects_what_the_procedure_rejects():
    rng = random.Random(0)
    for _ in range(200):
        p = [rng.choice([rng.random() * 0.1, rng.random()]) for _ in range(rng.randint(1, 9))]
        adjusted = report.holm(p)
        assert all(a >= q and a <= min(1.0, len(p) * q) + 1e-15 for a, q in zip(adjusted, p, strict=True))
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adjusted) if a < alpha} == step_down(p, alpha)


def test_holm_leaves_untested_comparisons_out():
    adjusted = report.holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert report.holm([]).tolist() == [] and report.holm([0.6, 0.7]).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------- the bootstrap interval

def test_paired_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 300)
    b = a + 0.1 + rng.normal(0, 0.2, 300)  # the true mean difference is 0.1
    low, high = report.paired_interval(b - a)
    assert low < 0.1 < high and low > 0
    sd = float(np.std(b - a, ddof=1))
    assert high - low == pytest.approx(2 * 1.96 * sd / math.sqrt(300), rel=0.1)  # near the normal interval
    assert report.paired_interval(b - a) == (low, high)  # seeded


def test_paired_interval_coverage_on_skewed_differences():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        d = rng.exponential(1.0, 40) - 0.9  # skewed, true mean 0.1
        low, high = report.paired_interval(d, n_resamples=2000)
        covered += low <= 0.1 <= high
    assert 0.88 <= covered / 200 <= 0.99  # nominal 95%; 200 data sets: a standard error of 1.5 points


def test_paired_result_and_degenerate_differences():
    assert report.paired_interval([0.25] * 5) == (0.25, 0.25)
    r = report.paired_test([0.2] * N, [0.5] * N)
    assert (r.diff, r.low, r.high, r.n, r.exact) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3),
                                                     N, True)
    assert r.p == 2 / 2 ** N  # only the identity and the all-flipped vectors are as extreme
    assert math.isnan(report.paired_test([], []).p)


def test_blocks_of_sign_vectors_change_nothing(monkeypatch):
    d = [0.3, -0.1, 0.2, 0.25, 0.05, -0.3, 0.4]
    sampled = report.sign_flip_p([d * 3], n_resamples=50)[0]
    monkeypatch.setattr(paired_mod, "_BLOCK", 7 * 3)  # blocks of 3 sign vectors of 7 items, 1 of 21 items
    assert report.sign_flip_p([d])[0] == enumerated_p(d)
    assert report.sign_flip_p([d * 3], n_resamples=50)[0] == sampled
