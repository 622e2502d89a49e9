"""Win rates with confidence intervals, and AlpacaEval 2.0's length-controlled win rate in a
simplified form. Pure functions: the tests check them against values computed another way."""

from __future__ import annotations

import math
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
