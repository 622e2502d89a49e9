"""Selection rules over scored responses, as pure functions of a list of scores: the best response
(for rejection-sampling finetuning), chosen/rejected pairs (for DPO) and the best-of-N curve.

Ties: responses are ranked by score, highest first, and equal scores keep their response order
(the lower response index ranks higher). Every rule below reads that one ranking, so a tie is
always broken the same way. A DPO pair needs a strictly positive score gap above `min_margin`;
pairs of equal scores carry no preference and are never emitted.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from math import comb
from typing import Literal

Strategy = Literal["best-worst", "best-vs-rank", "best-vs-random", "all-pairs-above-margin"]
STRATEGIES: tuple[str, ...] = ("best-worst", "best-vs-rank", "best-vs-random", "all-pairs-above-margin")

# Why a context gives no RS example.
NO_RESPONSES = "no_responses"
BELOW_MIN_SCORE = "below_min_score"
BELOW_MIN_MARGIN = "below_min_margin_over_median"


def ranking(scores: Sequence[float]) -> list[int]:
    """Response indices, best first; equal scores in response order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def choose_best(
    scores: Sequence[float],
    min_score: float | None = None,
    min_margin_over_median: float | None = None,
) -> tuple[int | None, str | None]:
    """(index of the best response, None), or (None, why it is not good enough).

    min_score: the best must score at least this. min_margin_over_median: the best must beat the
    median of the context's scores by at least this (a context whose responses all score alike
    teaches little)."""
    if not scores:
        return None, NO_RESPONSES
    best = ranking(scores)[0]
    if min_score is not None and scores[best] < min_score:
        return None, BELOW_MIN_SCORE
    margin = scores[best] - statistics.median(scores)
    if min_margin_over_median is not None and margin < min_margin_over_median:
        return None, BELOW_MIN_MARGIN
    return best, None


def rank_position(n: int, rank: int | None = None, quantile: float | None = None) -> int:
    """Position in the best-first ranking (0 = best) of the rejected response for best-vs-rank.

    rank: 1-based from the best (2 = second best), negative from the worst (-1 = worst); a rank
    beyond the available responses means the worst. quantile: 0 = best, 1 = worst, rounded to
    the nearest position. Never the best itself (position >= 1)."""
    if (rank is None) == (quantile is None):
        raise ValueError("best-vs-rank needs exactly one of rank or quantile")
    if rank is not None:
        if rank in (0, 1):
            raise ValueError(f"rank {rank}: the rejected response must rank below the best (2, 3, ... or -1, -2, ...)")
        pos = rank - 1 if rank > 0 else n + rank
    else:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile {quantile} outside [0, 1]")
        pos = round(quantile * (n - 1))
    return min(max(pos, 1), n - 1)


def preference_pairs(
    scores: Sequence[float],
    strategy: Strategy,
    *,
    rank: int | None = None,
    quantile: float | None = None,
    min_margin: float = 0.0,
    rng: random.Random | None = None,
    max_pairs: int | None = None,
) -> list[tuple[int, int]]:
    """(chosen index, rejected index) pairs for one context.

    best-worst: the best against the worst. best-vs-rank: the best against the response at
    `rank` or `quantile` (see rank_position). best-vs-random: the best against a uniformly drawn
    other response (`rng`; seed it per context for reproducible, order-independent draws).
    all-pairs-above-margin: every pair whose gap exceeds `min_margin`, largest gaps first, at
    most `max_pairs`. Every strategy drops pairs whose gap is not above `min_margin`."""
    n = len(scores)
    if n < 2:
        return []
    order = ranking(scores)
    if strategy == "best-worst":
        pairs = [(order[0], order[-1])]
    elif strategy == "best-vs-rank":
        pairs = [(order[0], order[rank_position(n, rank, quantile)])]
    elif strategy == "best-vs-random":
        pairs = [(order[0], (rng or random.Random(0)).choice(order[1:]))]
    elif strategy == "all-pairs-above-margin":
        pairs = [(order[a], order[b]) for a in range(n) for b in range(a + 1, n)]
        # Largest gap first; equal gaps by the chosen's, then the rejected's rank.
        position = {idx: pos for pos, idx in enumerate(order)}
        pairs.sort(key=lambda p: (-(scores[p[0]] - scores[p[1]]), position[p[0]], position[p[1]]))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    pairs = [(c, r) for c, r in pairs if scores[c] - scores[r] > min_margin]
    return pairs[:max_pairs] if max_pairs is not None else pairs


def expected_max_of_subset(scores: Sequence[float], k: int) -> float:
    """E[max score of a uniformly random k-subset of the n scores], exactly (no resampling).

    With the scores sorted ascending, s_(i) is the maximum of exactly C(i-1, k-1) of the C(n, k)
    subsets (those whose other k-1 members are all below it), so
        E = sum_{i=k..n} s_(i) * C(i-1, k-1) / C(n, k).
    Drawing k responses with replacement instead would bias the curve towards repeats."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of scores ({n})")
    ordered = sorted(scores)
    total = comb(n, k)
    # Integer numerators divided once: exact weights even where C(n, k) exceeds 2**53.
    return sum(ordered[i - 1] * (comb(i - 1, k - 1) / total) for i in range(k, n + 1))


def best_of_n_sizes(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max, plus n_max itself when it is not a power of two."""
    sizes = []
    k = 1
    while k <= n_max:
        sizes.append(k)
        k *= 2
    if n_max >= 1 and sizes[-1] != n_max:
        sizes.append(n_max)
    return sizes


def best_of_n_curve(score_lists: Sequence[Sequence[float]], n_max: int | None = None) -> list[dict]:
    """Expected best-of-N score averaged over contexts, for N = 1, 2, 4, ..., n_max.

    A context with fewer than N responses is left out of that N's average (`contexts` says how
    many were averaged), since its best-of-N is undefined."""
    available = max((len(s) for s in score_lists), default=0)
    n_max = available if n_max is None else min(n_max, available)
    curve = []
    for k in best_of_n_sizes(n_max):
        values = [expected_max_of_subset(s, k) for s in score_lists if len(s) >= k]
        curve.append({"n": k, "expected_max": statistics.fmean(values), "contexts": len(values)})
    return curve


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, mean, std, min, p10, median, p90, max (empty -> count 0 only)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def quantile(q: float) -> float:
        # Linear interpolation between closest ranks (numpy's default).
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {
        "count": len(ordered),
        "mean": statistics.fmean(ordered),
        "std": statistics.pstdev(ordered),
        "min": ordered[0],
        "p10": quantile(0.1),
        "median": quantile(0.5),
        "p90": quantile(0.9),
        "max": ordered[-1],
    }
