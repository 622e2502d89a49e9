"""Selection rules on a hand-checkable fixture: known scores -> known best and pairs.

SCORES, ranked best first with ties in response order: idx 1 (2.0), idx 3 (2.0), idx 0 (0.5),
idx 4 (0.0), idx 2 (-1.0); median 0.5.
"""

from __future__ import annotations

import random

import pytest

from xwin.data.selection import (
    BELOW_MIN_MARGIN,
    BELOW_MIN_SCORE,
    NO_RESPONSES,
    choose_best,
    preference_pairs,
    rank_position,
    ranking,
    summary,
)

SCORES = [0.5, 2.0, -1.0, 2.0, 0.0]


def test_ranking_breaks_ties_by_response_index():
    assert ranking(SCORES) == [1, 3, 0, 4, 2]
    assert ranking([1.0, 1.0, 1.0]) == [0, 1, 2]


def test_best_is_the_first_of_tied_top_scores():
    assert choose_best(SCORES) == (1, None)


def test_best_respects_min_score():
    assert choose_best(SCORES, min_score=2.0) == (1, None)
    assert choose_best(SCORES, min_score=2.1) == (None, BELOW_MIN_SCORE)


def test_best_respects_margin_over_median():
    # best 2.0 - median 0.5 = 1.5
    assert choose_best(SCORES, min_margin_over_median=1.5) == (1, None)
    assert choose_best(SCORES, min_margin_over_median=1.6) == (None, BELOW_MIN_MARGIN)
    # all equal: margin 0, so any positive minimum rejects the context
    assert choose_best([3.0, 3.0], min_margin_over_median=0.01) == (None, BELOW_MIN_MARGIN)


def test_best_of_nothing():
    assert choose_best([]) == (None, NO_RESPONSES)


def test_best_worst():
    assert preference_pairs(SCORES, "best-worst") == [(1, 2)]


@pytest.mark.parametrize(
    ("rank", "quantile", "expected"),
    [
        (3, None, [(1, 0)]),  # third best
        (-1, None, [(1, 2)]),  # worst
        (-2, None, [(1, 4)]),  # second worst
        (10, None, [(1, 2)]),  # beyond the responses: the worst
        (2, None, []),  # second best ties with the best: no preference, no pair
        (None, 0.5, [(1, 0)]),  # position round(0.5 * 4) = 2
        (None, 1.0, [(1, 2)]),
        (None, 0.75, [(1, 4)]),  # position 3
        (None, 0.0, []),  # never the best itself: position 1, the tied second best
    ],
)
def test_best_vs_rank(rank, quantile, expected):
    assert preference_pairs(SCORES, "best-vs-rank", rank=rank, quantile=quantile) == expected


def test_rank_position_rejects_nonsense():
    with pytest.raises(ValueError):
        rank_position(5, rank=1)
    with pytest.raises(ValueError):
        rank_position(5)
    with pytest.raises(ValueError):
        rank_position(5, rank=2, quantile=0.5)


def test_best_vs_random_is_seeded_and_never_the_best():
    drawn = set()
    for seed in range(200):
        pairs = preference_pairs(SCORES, "best-vs-random", rng=random.Random(seed))
        again = preference_pairs(SCORES, "best-vs-random", rng=random.Random(seed))
        assert pairs == again
        # idx 3 ties with the best, so drawing it yields no pair
        assert pairs in ([], [(1, 0)], [(1, 4)], [(1, 2)])
        drawn.add(pairs[0][1] if pairs else 3)
    assert drawn == {0, 2, 3, 4}


def test_all_pairs_above_margin_zero_lists_every_positive_gap_largest_first():
    assert preference_pairs(SCORES, "all-pairs-above-margin") == [
        (1, 2), (3, 2),  # gap 3.0
        (1, 4), (3, 4),  # gap 2.0
        (1, 0), (3, 0), (0, 2),  # gap 1.5
        (4, 2),  # gap 1.0
        (0, 4),  # gap 0.5
    ]  # (1, 3) has gap 0: absent


def test_all_pairs_above_margin_is_strict_and_capped():
    pairs = preference_pairs(SCORES, "all-pairs-above-margin", min_margin=1.5)
    assert pairs == [(1, 2), (3, 2), (1, 4), (3, 4)]
    capped = preference_pairs(SCORES, "all-pairs-above-margin", min_margin=1.5, max_pairs=3)
    assert capped == [(1, 2), (3, 2), (1, 4)]


def test_min_margin_applies_to_every_strategy():
    assert preference_pairs(SCORES, "best-worst", min_margin=3.0) == []
    assert preference_pairs(SCORES, "best-worst", min_margin=2.99) == [(1, 2)]


def test_fewer_than_two_responses_give_no_pairs():
    assert preference_pairs([1.0], "best-worst") == []
    assert preference_pairs([], "all-pairs-above-margin") == []


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy"):
        preference_pairs(SCORES, "best-median")  # type: ignore[arg-type]


def test_summary_matches_hand_computed_statistics():
    s = summary([3.0, 1.0, 2.0, 4.0])
    assert s["count"] == 4 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["mean"] == pytest.approx(2.5)
    assert s["median"] == pytest.approx(2.5)
    assert s["p10"] == pytest.approx(1.3)  # 1 + 0.3 * (2 - 1)
    assert s["std"] == pytest.approx((1.25) ** 0.5)
    assert summary([]) == {"count": 0}
