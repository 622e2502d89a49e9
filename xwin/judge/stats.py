"""Win rates with confidence intervals, AlpacaEval 2.0's length-controlled win rate in a
simplified form, and paired statistics for two models judged on the same prompts (a paired
bootstrap of the difference of their mean scores, McNemar's exact test for paired binary
outcomes). Pure functions: the tests check them against values computed another way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from statistics import NormalDist

import numpy as np

from xwin.judge.verdicts import OUTCOME_SCORE, Outcome, outcome_counts


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (fractional successes allowed: ties count half)."""
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def bootstrap_interval(
    scores: list[float], confidence: float = 0.95, samples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score (resampling the compared items)."""
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def win_rate(
    outcomes: list[Outcome],
    confidence: float = 0.95,
    interval: str = "wilson",
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict:
    """Win rate of X over Y from swapped comparisons: wins 1, ties and inconsistent verdicts
    1/2, unparseable ones left out. Returns the rate, its interval and the counts."""
    scores = [OUTCOME_SCORE[o] for o in outcomes if o in OUTCOME_SCORE]
    n = len(scores)
    rate = sum(scores) / n if n else math.nan
    if interval == "bootstrap":
        low, high = bootstrap_interval(scores, confidence, bootstrap_samples, seed)
    else:
        low, high = wilson_interval(sum(scores), n, confidence)
    return {"win_rate": rate, "ci_low": low, "ci_high": high, "n": n, "interval": interval,
            "confidence": confidence, **outcome_counts(outcomes)}


def length_controlled_win_rate(
    scores: list[float],
    model_lengths: list[int],
    reference_lengths: list[int],
    length_l2: float = 1.0,
    intercept_l2: float = 1e-4,
) -> float:
    """AlpacaEval 2.0's length-controlled win rate, simplified: fit
        P(model beats reference) = sigmoid(a + b * tanh((len_model - len_ref) / sd))
    by penalised maximum likelihood on soft labels (win 1, tie 1/2, loss 0), sd the standard
    deviation of the length differences; report sigmoid(a), the win rate the fit predicts at
    equal length. AlpacaEval also fits per-instruction difficulty; one reference and one
    model need no such term. length_l2 is sklearn's default C=1 on b; the tiny intercept_l2
    only keeps a finite answer when every item is won (or lost)."""
    y = np.asarray(scores, dtype=float)
    if y.size == 0:
        return math.nan
    diff = np.asarray(model_lengths, dtype=float) - np.asarray(reference_lengths, dtype=float)
    sd = diff.std()
    x = np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    features = np.stack([np.ones_like(x), x], axis=1)
    penalty = np.diag([intercept_l2, length_l2])
    theta = np.zeros(2)
    for _ in range(100):  # Newton's method: two parameters, a convex objective
        p = 1 / (1 + np.exp(-(features @ theta)))
        grad = features.T @ (p - y) + penalty @ theta
        hess = features.T @ (features * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + math.exp(-theta[0])))


def paired_bootstrap(
    x_scores: Sequence[float | None], y_scores: Sequence[float | None], confidence: float = 0.95,
    samples: int = 1000, seed: int = 0,
) -> dict:
    """Mean of X's per-prompt scores minus Y's, on the same prompts, with a percentile bootstrap
    interval that resamples prompts (each resample keeps the pairs together, so what the two
    models share, such as a prompt's difficulty, cancels). x_scores[i] and y_scores[i] belong to
    prompt i; a pair where either score is None or NaN (an unparseable grade) is left out.

    Returns difference, ci_low, ci_high, mean_x, mean_y (over the pairs kept), n (pairs kept),
    confidence and samples. Seeded: the same inputs and seed give the same interval."""
    if len(x_scores) != len(y_scores):
        raise ValueError(f"paired scores differ in length: {len(x_scores)} and {len(y_scores)}")
    pairs = [(float(a), float(b)) for a, b in zip(x_scores, y_scores)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    out = {"n": len(pairs), "confidence": confidence, "samples": samples}
    if not pairs:
        return {**out, "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "mean_x": math.nan, "mean_y": math.nan}
    x, y = np.asarray(pairs).T
    diff = x - y
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return {**out, "difference": float(diff.mean()), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1 - alpha)), "mean_x": float(x.mean()),
            "mean_y": float(y.mean())}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: under the null each of the
    n = b + c discordant pairs goes either way with probability 1/2, so
        p = min(1, 2 * sum_{k <= min(b, c)} C(n, k) / 2^n)
    (1 when there is no discordant pair). Exact in integers, then one division."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def mcnemar_exact(x_outcomes: Sequence[bool], y_outcomes: Sequence[bool]) -> dict:
    """McNemar's exact test for paired binary outcomes (e.g. "beat the reference on prompt i")
    of two models on the same prompts. b: prompts where only X succeeded; c: only Y. Returns
    b, c, n (pairs), x_successes, y_successes and the two-sided exact p_value."""
    if len(x_outcomes) != len(y_outcomes):
        raise ValueError(f"paired outcomes differ in length: {len(x_outcomes)} and {len(y_outcomes)}")
    b = sum(bool(x) and not bool(y) for x, y in zip(x_outcomes, y_outcomes))
    c = sum(bool(y) and not bool(x) for x, y in zip(x_outcomes, y_outcomes))
    return {"b": b, "c": c, "n": len(x_outcomes), "x_successes": sum(map(bool, x_outcomes)),
            "y_successes": sum(map(bool, y_outcomes)), "p_value": mcnemar_exact_p(b, c)}
