"""Paired comparisons of models on the same prompts, as the eval stage builds them from its
judgment records: which items pair up, and that the statistics are the stats module's."""

import pytest

from xwin.judge.alpaca import paired_alpaca
from xwin.judge.mtbench import paired_single
from xwin.judge.stats import mcnemar_exact_p, paired_bootstrap
from xwin.stages.eval import EvalConfig, paired_rewards


def grade(model, qid, turn, rating):
    return {"model": model, "question_id": qid, "turn": turn, "rating": rating}


def test_mtbench_grades_pair_by_question_and_turn_and_skip_unrated_items():
    records = [grade("a", 1, 1, 8.0), grade("a", 1, 2, 6.0), grade("a", 2, 1, None),
               grade("b", 1, 2, 5.0), grade("b", 1, 1, 4.0), grade("b", 2, 1, 9.0),
               grade("c", 1, 1, 8.0), grade("c", 1, 2, 6.0), grade("c", 2, 1, 1.0)]
    rows = paired_single(records, ["a", "b", "c"], samples=300, seed=2)
    assert [(r["model_x"], r["model_y"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = rows[0]  # items (1,1): 8 - 4, (1,2): 6 - 5; (2,1) has no rating from a
    assert ab["n"] == 2 and ab["difference"] == pytest.approx((4 + 1) / 2)
    assert ab == {"model_x": "a", "model_y": "b",
                  **paired_bootstrap([8.0, 6.0, None], [4.0, 5.0, 9.0], samples=300, seed=2)}
    assert rows[1]["difference"] == 0 and (rows[1]["ci_low"], rows[1]["ci_high"]) == (0, 0)
    assert rows[2]["n"] == 3


def alpaca(model, index, outcome):
    return {"model_x": model, "index": index, "outcome": outcome}


def test_alpaca_pairs_share_instructions_and_test_wins_with_mcnemar():
    a = ["win", "win", "win", "win", "loss", "tie", "error", "win"]
    b = ["loss", "loss", "loss", "win", "win", "tie", "win", "inconsistent"]
    records = [alpaca("a", i, o) for i, o in enumerate(a)] + [alpaca("b", i, o) for i, o in enumerate(b)]
    (row,) = paired_alpaca(records, samples=200)
    # instruction 6 drops out (a's verdict errored); b: a alone beat the reference on 0, 1, 2,
    # 7; c: b alone on 4
    assert row["n"] == 7
    assert (row["mcnemar"]["b"], row["mcnemar"]["c"]) == (4, 1)
    assert row["mcnemar"]["p_value"] == pytest.approx(2 * (1 + 5) / 2**5)  # = mcnemar_exact_p(4, 1)
    assert row["mcnemar"]["p_value"] == mcnemar_exact_p(4, 1)
    scores_a, scores_b = [1, 1, 1, 1, 0, 0.5, 1], [0, 0, 0, 1, 1, 0.5, 0.5]
    assert row["difference"] == pytest.approx((sum(scores_a) - sum(scores_b)) / 7)


def test_reward_scores_pair_answer_by_answer():
    reward = {"sft": {"scores": [0.0, 1.0, 2.0]}, "dpo": {"scores": [1.0, 2.0, 3.5]}}
    (row,) = paired_rewards(EvalConfig(), reward)
    assert (row["model_x"], row["model_y"], row["n"]) == ("sft", "dpo", 3)
    assert row["difference"] == pytest.approx((-1 - 1 - 1.5) / 3)  # answer by answer
    assert row["ci_low"] <= row["difference"] <= row["ci_high"] <= -1.0
