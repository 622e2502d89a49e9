"""The best-of-N curve: the exact expectation of the max of a random k-subset, checked against
enumerating every subset."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from xwin.data.selection import best_of_n_curve, best_of_n_sizes, expected_max_of_subset


def brute_force(scores, k):
    return statistics.fmean(max(c) for c in itertools.combinations(scores, k))


def test_hand_computed_values():
    assert expected_max_of_subset([1.0, 2.0, 3.0], 1) == pytest.approx(2.0)
    assert expected_max_of_subset([3.0, 1.0, 2.0], 2) == pytest.approx(8 / 3)  # 2, 3, 3
    assert expected_max_of_subset([1.0, 2.0, 3.0], 3) == pytest.approx(3.0)
    assert expected_max_of_subset([1.0, 1.0, 2.0], 2) == pytest.approx(5 / 3)  # 1, 2, 2


@pytest.mark.parametrize("n", [1, 2, 5, 9, 12])
def test_matches_enumeration_of_every_subset(n):
    rng = random.Random(n)
    scores = [round(rng.gauss(0, 1), 2) for _ in range(n)]
    scores[-1] = scores[0]  # a tie, too
    for k in range(1, n + 1):
        assert expected_max_of_subset(scores, k) == pytest.approx(brute_force(scores, k), abs=1e-12)


def test_large_n_stays_exact():
    # n = 64, k = 63: each subset leaves one response out, so E = (63 * s_64 + s_63) / 64.
    scores = [float(i) for i in range(64)]
    assert expected_max_of_subset(scores, 63) == pytest.approx((63 * 63 + 62) / 64, abs=1e-12)
    assert expected_max_of_subset(scores, 32) == pytest.approx(mean_max_of_uniform_subset(scores, 32))
    assert expected_max_of_subset(scores, 64) == 63.0
    assert expected_max_of_subset(scores, 1) == pytest.approx(31.5)


def mean_max_of_uniform_subset(scores, k):
    """For distinct integer scores 0..n-1 the max of a k-subset has the known mean
    k * (n + 1) / (k + 1) - 1 (order statistics of a uniform draw without replacement)."""
    n = len(scores)
    return k * (n + 1) / (k + 1) - 1


def test_k_out_of_range():
    with pytest.raises(ValueError):
        expected_max_of_subset([1.0, 2.0], 3)
    with pytest.raises(ValueError):
        expected_max_of_subset([1.0, 2.0], 0)


def test_sizes_are_powers_of_two_then_the_maximum():
    assert best_of_n_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert best_of_n_sizes(6) == [1, 2, 4, 6]
    assert best_of_n_sizes(1) == [1]


def test_curve_averages_over_contexts_with_enough_responses():
    curve = best_of_n_curve([[1.0, 2.0, 3.0], [0.0, 4.0]])
    assert [p["n"] for p in curve] == [1, 2, 3]
    assert curve[0]["expected_max"] == pytest.approx(2.0) and curve[0]["contexts"] == 2
    assert curve[1]["expected_max"] == pytest.approx((8 / 3 + 4.0) / 2)
    assert curve[2] == {"n": 3, "expected_max": pytest.approx(3.0), "contexts": 1}
    assert [p["n"] for p in best_of_n_curve([[1.0, 2.0, 3.0]], n_max=2)] == [1, 2]
