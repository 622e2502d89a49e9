import math

import numpy as np
import pytest
import torch

from xwin.judge.stats import (
    bootstrap_interval,
    length_controlled_win_rate,
    mcnemar_exact,
    mcnemar_exact_p,
    paired_bootstrap,
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


@pytest.mark.parametrize("b, c, expected", [
    (1, 6, 2 * (1 + 7) / 2**7),  # C(7,0) + C(7,1) = 8: p = 16/128 = 0.125
    (6, 1, 2 * (1 + 7) / 2**7),  # symmetric in b and c
    (0, 5, 2 * 1 / 2**5),  # one-sided tail C(5,0) = 1: p = 0.0625
    (2, 10, 2 * (1 + 12 + 66) / 2**12),  # C(12,0..2) = 1, 12, 66: p = 158/4096
    (3, 3, 1.0),  # 2 * (1 + 6 + 15 + 20) / 64 = 1.3125, capped at 1
    (0, 0, 1.0),  # no discordant pair: no evidence either way
])
def test_mcnemar_exact_p_by_hand(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, abs=1e-15)


def test_mcnemar_exact_matches_a_brute_force_binomial_and_counts_discordant_pairs():
    # X alone succeeds on 1 prompt, Y alone on 6, both on 2, neither on 1
    x = [True] + [False] * 6 + [True, True] + [False]
    y = [False] + [True] * 6 + [True, True] + [False]
    result = mcnemar_exact(x, y)
    assert (result["b"], result["c"], result["n"]) == (1, 6, 10)
    assert (result["x_successes"], result["y_successes"]) == (3, 8)
    assert result["p_value"] == pytest.approx(0.125)
    # the two-sided p by enumerating all 2^7 ways the 7 discordant pairs could fall: the share
    # at least as extreme as the observed split (|X-only - Y-only| >= 5)
    extreme = sum(abs(2 * bin(m).count("1") - 7) >= abs(1 - 6) for m in range(2**7))
    assert result["p_value"] == pytest.approx(extreme / 2**7)
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_of_a_constant_difference_has_no_width():
    # every prompt: X scores 2 above Y, so every resample's mean difference is exactly 2
    result = paired_bootstrap([3.0, 5.0, 9.0, 4.0], [1.0, 3.0, 7.0, 2.0], samples=200, seed=5)
    assert (result["difference"], result["ci_low"], result["ci_high"]) == (2.0, 2.0, 2.0)
    assert (result["mean_x"], result["mean_y"], result["n"]) == (5.25, 3.25, 4)


def test_paired_bootstrap_matches_a_direct_numpy_computation_with_the_same_seed():
    rng = np.random.default_rng(7)
    y = rng.integers(1, 11, size=25).astype(float)
    x = np.clip(y + rng.integers(-2, 4, size=25), 1, 10)
    result = paired_bootstrap(x.tolist(), y.tolist(), confidence=0.9, samples=500, seed=11)
    d = x - y
    resampled = d[np.random.default_rng(11).integers(0, 25, size=(500, 25))].mean(axis=1)
    assert result["difference"] == pytest.approx(d.mean())
    assert result["ci_low"] == pytest.approx(np.quantile(resampled, 0.05))
    assert result["ci_high"] == pytest.approx(np.quantile(resampled, 0.95))
    assert paired_bootstrap(x.tolist(), y.tolist(), samples=500, seed=11) == \
        paired_bootstrap(x.tolist(), y.tolist(), samples=500, seed=11)


def test_paired_bootstrap_drops_unscored_pairs_and_is_narrower_than_unpaired():
    result = paired_bootstrap([1.0, None, 3.0, math.nan], [0.0, 2.0, 1.0, 1.0])
    assert result["n"] == 2 and result["difference"] == pytest.approx((1 + 2) / 2)
    assert math.isnan(paired_bootstrap([None], [1.0])["difference"])
    # prompts differ a lot in difficulty, X is always a little better: pairing cancels the
    # difficulty, so the paired interval is far narrower than the difference of two intervals
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 3, size=60)
    x, y = difficulty + 0.5 + rng.normal(0, 0.2, 60), difficulty + rng.normal(0, 0.2, 60)
    paired = paired_bootstrap(x.tolist(), y.tolist(), seed=1)
    assert 0 < paired["ci_low"] < 0.5 < paired["ci_high"]
    lo_x, hi_x = bootstrap_interval(x.tolist(), seed=1)
    assert paired["ci_high"] - paired["ci_low"] < (hi_x - lo_x) / 5
