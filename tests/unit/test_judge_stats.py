import math

import numpy as np
import pytest
import torch

from xwin.judge.stats import (
    bootstrap_interval,
    length_controlled_win_rate,
    wilson_interval,
    win_rate,
)
from xwin.judge.verdicts import Outcome


def wilson_by_inversion(p_hat: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval by its definition: every p whose normal test does not reject p_hat,
    |p_hat - p| <= z * sqrt(p (1 - p) / n), found by bisection instead of the closed form."""
    def inside(p):
        return abs(p_hat - p) <= z * math.sqrt(p * (1 - p) / n)

    def edge(lo, hi):  # lo outside, hi inside (or the reverse): bisect to the boundary
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if inside(mid) != inside(hi) else (lo, mid)
        return (lo + hi) / 2

    return (edge(0.0, p_hat) if not inside(0.0) else 0.0,
            edge(1.0, p_hat) if not inside(1.0) else 1.0)


@pytest.mark.parametrize("successes, n", [(7, 10), (0.5, 3), (40, 100), (2.5, 50), (30, 30)])
def test_wilson_interval_matches_its_definition(successes, n):
    z = 1.959963984540054  # the 97.5% normal quantile
    low, high = wilson_interval(successes, n, 0.95)
    ref_low, ref_high = wilson_by_inversion(successes / n, n, z)
    assert low == pytest.approx(ref_low, abs=1e-9)
    assert high == pytest.approx(ref_high, abs=1e-9)


def test_win_rate_counts_ties_and_inconsistent_verdicts_half_and_skips_errors():
    outcomes = ([Outcome.WIN] * 5 + [Outcome.LOSS] * 2 + [Outcome.TIE] * 2
                + [Outcome.INCONSISTENT] + [Outcome.ERROR] * 3)
    result = win_rate(outcomes)
    assert result["n"] == 10
    assert result["win_rate"] == pytest.approx((5 + 0.5 * 3) / 10)
    assert (result["win"], result["loss"], result["tie"], result["inconsistent"], result["error"]) \
        == (5, 2, 2, 1, 3)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(6.5, 10))


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_items():
    rng = np.random.default_rng(1)
    small = rng.choice([0.0, 0.5, 1.0], size=40).tolist()
    large = rng.choice([0.0, 0.5, 1.0], size=4000).tolist()
    assert bootstrap_interval(small, seed=3) == bootstrap_interval(small, seed=3)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < np.mean(small) < hi_s
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    # for many items the percentile bootstrap approaches the normal interval of the mean
    half = 1.96 * np.std(large) / math.sqrt(len(large))
    assert hi_l - lo_l == pytest.approx(2 * half, rel=0.1)
    assert win_rate([Outcome.WIN, Outcome.LOSS] * 20, interval="bootstrap")["interval"] == "bootstrap"


def lc_by_lbfgs(scores, model_len, ref_len, length_l2=1.0, intercept_l2=1e-4) -> float:
    """The same penalised logistic fit, solved by torch's L-BFGS instead of Newton steps."""
    y = torch.tensor(scores, dtype=torch.float64)
    diff = torch.tensor(model_len, dtype=torch.float64) - torch.tensor(ref_len, dtype=torch.float64)
    x = torch.tanh(diff / diff.std(unbiased=False))
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        logits = theta[0] + theta[1] * x
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        value = value + 0.5 * (intercept_l2 * theta[0] ** 2 + length_l2 * theta[1] ** 2)
        value.backward()
        return value

    opt.step(loss)
    return torch.sigmoid(theta[0]).item()


def test_length_controlled_win_rate_matches_an_independent_fit():
    rng = np.random.default_rng(0)
    ref_len = rng.integers(100, 600, size=60)
    model_len = ref_len + rng.integers(-200, 400, size=60)
    # longer answers win more often, plus noise; some ties
    p = 1 / (1 + np.exp(-(0.2 + 2.0 * np.tanh((model_len - ref_len) / 200))))
    scores = np.where(rng.random(60) < p, 1.0, 0.0)
    scores[::7] = 0.5
    lc = length_controlled_win_rate(scores.tolist(), model_len.tolist(), ref_len.tolist())
    assert lc == pytest.approx(lc_by_lbfgs(scores.tolist(), model_len.tolist(), ref_len.tolist()),
                               abs=1e-6)
    # the length bias is taken out: LC sits below the raw win rate of this verbose model
    assert lc < scores.mean()


def test_length_controlled_equals_raw_win_rate_when_length_explains_nothing():
    scores = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    same = [100] * len(scores)
    assert length_controlled_win_rate(scores, same, same) == pytest.approx(np.mean(scores), abs=1e-3)
    assert math.isnan(length_controlled_win_rate([], [], []))
