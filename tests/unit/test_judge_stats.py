import math
import warnings

import numpy as np
import pytest

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


def alpaca_eval_lc(scores, model_lengths, reference_lengths, monkeypatch, tmp_path, glm_info=None) -> float:
    """The LC win rate by alpaca-eval's own entry point, get_length_controlled_winrate, on the same
    records in AlpacaEval's annotation format (output_1 the reference, output_2 the model;
    preference 1 reference wins, 2 model wins, 1.5 tie), with the formula without the hub-only
    terms. Its featurizer downloads df_gamed.csv for the per-instruction difficulty, which that
    formula does not use: a local stand-in (zeros for our instruction indices) replaces the
    download. The package ships no per-example annotations (only per-model leaderboard
    aggregates), so the records are synthetic."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    gamed = tmp_path / "df_gamed.csv"
    pd.DataFrame({"model": "gamed", "index": range(len(scores)), "instruction_difficulty": 0.0}).to_csv(
        gamed, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kwargs: str(gamed))
    annotations = pd.DataFrame({
        "preference": [{1.0: 2.0, 0.5: 1.5, 0.0: 1.0}[s] for s in scores],
        "output_1": ["r" * int(n) for n in reference_lengths],
        "output_2": ["m" * int(n) for n in model_lengths],
        "generator_1": "reference", "generator_2": "model", "annotator": "judge",
        "index": range(len(scores))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's, about the package's penalty=
        metrics = glm_winrate.get_length_controlled_winrate(
            annotations, glm_info=glm_info or glm_winrate.GLM_INFO["length_controlled_minimal"],
            save_weights_dir=None, is_warn_extreme_changes=False)
    return metrics["length_controlled_winrate"] / 100


def verbose_model(seed: int, n: int, skill: float):
    """Judged records of a model whose longer answers win more often, with noise and some ties."""
    rng = np.random.default_rng(seed)
    ref_len = rng.integers(100, 600, size=n)
    model_len = np.maximum(ref_len + rng.integers(-200, 400, size=n), 1)
    p = 1 / (1 + np.exp(-(skill + 2.0 * np.tanh((model_len - ref_len) / 200))))
    scores = np.where(rng.random(n) < p, 1.0, 0.0)
    scores[::7] = 0.5
    return scores.tolist(), model_len.tolist(), ref_len.tolist()


@pytest.mark.parametrize("seed, n, skill", [(0, 60, 0.2), (1, 200, 0.8), (2, 30, 1.5), (3, 805, 0.0)])
def test_length_controlled_win_rate_is_alpaca_evals_glm(seed, n, skill, monkeypatch, tmp_path):
    scores, model_len, ref_len = verbose_model(seed, n, skill)
    assert np.mean(scores) >= 0.5
    lc = length_controlled_win_rate(scores, model_len, ref_len)
    assert lc == pytest.approx(alpaca_eval_lc(scores, model_len, ref_len, monkeypatch, tmp_path), abs=1e-12)
    # the length bias is taken out: LC sits below the raw win rate of this verbose model
    assert lc < np.mean(scores)


@pytest.mark.parametrize("seed, n, skill", [(4, 60, -1.0), (5, 200, -2.5), (6, 805, -1.5)])
def test_length_controlled_win_rate_of_a_losing_model_is_the_mirrored_fit(seed, n, skill, monkeypatch,
                                                                          tmp_path):
    """Mostly losses: fitted on the mirrored labels (the same estimator); where both outcomes fill
    every fold, the package's direct fit agrees up to its solver's tolerance."""
    scores, model_len, ref_len = verbose_model(seed, n, skill)
    assert np.mean(scores) < 0.5
    lc = length_controlled_win_rate(scores, model_len, ref_len)
    mirrored = [1 - s for s in scores]
    assert lc == pytest.approx(1 - alpaca_eval_lc(mirrored, model_len, ref_len, monkeypatch, tmp_path), abs=1e-12)
    assert lc == pytest.approx(alpaca_eval_lc(scores, model_len, ref_len, monkeypatch, tmp_path), abs=1e-3)
    assert lc < np.mean(scores)


def test_length_controlled_win_rate_of_one_sided_records(monkeypatch, tmp_path):
    rng = np.random.default_rng(7)
    model_len, ref_len = rng.integers(50, 500, size=20).tolist(), [300] * 20
    wins = length_controlled_win_rate([1.0] * 20, model_len, ref_len)
    assert wins == pytest.approx(alpaca_eval_lc([1.0] * 20, model_len, ref_len, monkeypatch, tmp_path), abs=1e-12)
    assert wins > 0.99
    # all losses: the mirror image of all wins (the package's direct fit says 50% here)
    assert length_controlled_win_rate([0.0] * 20, model_len, ref_len) == pytest.approx(1 - wins, abs=1e-12)
    assert length_controlled_win_rate([0.5] * 20, model_len, ref_len) == pytest.approx(0.5, abs=1e-6)
    # one tie among 19 losses: near its raw 2.5%, as the mirror image (19 wins, one tie) is near 97.5%
    one_tie = [0.0] * 19 + [0.5]
    mirror = alpaca_eval_lc([1 - s for s in one_tie], model_len, ref_len, monkeypatch, tmp_path)
    assert length_controlled_win_rate(one_tie, model_len, ref_len) == pytest.approx(1 - mirror, abs=1e-12)
    assert mirror > 0.9


def test_length_controlled_win_rate_at_equal_lengths_is_the_intercept_only_glm(monkeypatch, tmp_path):
    """Equal lengths: no length feature (the package's would be 0/0); the same fit as the package's
    GLM with the length term left out of its formula."""
    scores = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    same = [100] * len(scores)
    intercept_only = {"formula": "not_gamed_baseline.astype(float) - 1", "regularize_to_baseline_lambda": None,
                      "kwargs": {"n_splits": 5}}
    lc = length_controlled_win_rate(scores, same, same)
    assert lc == pytest.approx(alpaca_eval_lc(scores, same, same, monkeypatch, tmp_path, intercept_only), abs=1e-12)
    assert lc == pytest.approx(np.mean(scores), abs=0.02)  # L1-shrunk towards 1/2, a little


def test_length_controlled_win_rate_of_few_items():
    assert math.isnan(length_controlled_win_rate([], [], []))
    assert length_controlled_win_rate([1.0], [50], [80]) > 0.9  # one item: no cross-validation
    lc = length_controlled_win_rate([1.0, 0.5, 1.0], [10, 200, 30], [50, 50, 50])  # 3 folds
    assert 0.5 <= lc <= 1


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
