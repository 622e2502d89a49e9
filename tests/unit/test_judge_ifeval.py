"""The verifiable benchmark: accuracies, intervals, lengths and paired comparisons, checked
against numbers worked out by hand for three prompts and two models."""

from __future__ import annotations

import math

import pytest

from xwin.judge.ifeval import benchmark, check_answers, model_summary
from xwin.judge.verifiable import Constraint, VerifiablePrompt

NO_COMMA = Constraint(instruction_id="punctuation:no_comma")
LOWER = Constraint(instruction_id="change_case:english_lowercase")
PROMPTS = [
    VerifiablePrompt(key="p1", prompt="Describe rain.", constraints=[NO_COMMA, LOWER]),
    VerifiablePrompt(key="p2", prompt="Describe snow.", constraints=[NO_COMMA]),
    VerifiablePrompt(key="p3", prompt="Describe wind.", constraints=[LOWER]),
]
ANSWERS = {
    # a: p1 both followed, p2 has a comma, p3 lowercase -> prompts 2/3, instructions 3/4
    "a": {"p1": "the rain falls softly on the quiet green hills of the old town",
          "p2": "snow is cold, white and soft",
          "p3": "the wind blows hard over the sea and the boats stay in the harbour"},
    # b: p1 capital letter (comma rule kept), p2 followed, p3 capital -> prompts 1/3, instructions 2/4
    "b": {"p1": "The rain falls softly on the quiet green hills of the old town",
          "p2": "snow is white and soft",
          "p3": "The wind blows hard over the sea and the boats stay in the harbour"},
}


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_each_answer_gets_a_verdict_per_constraint():
    checked = check_answers(PROMPTS, ANSWERS["a"])
    assert [c.strict for c in checked] == [(True, True), (False,), (True,)]
    assert [c.prompt_strict for c in checked] == [True, False, True]
    missing = check_answers(PROMPTS[:1], {})  # no answer: an empty one, which has no commas
    assert missing[0].chars == 0


def test_accuracies_intervals_and_lengths_match_a_hand_computation():
    summary = model_summary(check_answers(PROMPTS, ANSWERS["a"]))
    assert (summary["n_prompts"], summary["n_instructions"]) == (3, 4)
    assert summary["prompt_strict"]["value"] == pytest.approx(2 / 3)
    assert summary["instruction_strict"]["value"] == pytest.approx(3 / 4)
    assert summary["prompt_strict"]["ci"] == pytest.approx(list(wilson(2, 3)))
    assert summary["instruction_strict"]["ci"] == pytest.approx(list(wilson(3, 4)))
    lengths = [len(ANSWERS["a"][k]) for k in ("p1", "p2", "p3")]
    assert summary["length_chars"]["mean"] == pytest.approx(sum(lengths) / 3)
    assert summary["length_chars"]["median"] == sorted(lengths)[1]
    assert summary["length_words"] == {"mean": pytest.approx((13 + 6 + 14) / 3), "median": 13}


def test_the_paired_comparison_is_the_mean_difference_with_mcnemar():
    result = benchmark(PROMPTS, ANSWERS, pairs=[("a", "b")], samples=500, seed=1)
    paired = result["paired"]["a_vs_b"]
    # prompt-level strict: a = (1, 0, 1), b = (0, 1, 0): differences (1, -1, 1), mean 1/3
    assert paired["diff"] == pytest.approx(1 / 3)
    assert (paired["only_x"], paired["only_y"], paired["n"]) == (2, 1, 3)
    # McNemar exact, b=2, c=1: p = 2 * (C(3,0) + C(3,1)) / 2^3 = 1
    assert paired["mcnemar_p"] == pytest.approx(1.0)
    # every bootstrap mean of three values from {1, -1, 1} lies in [-1, 1]
    assert -1 <= paired["ci"][0] <= paired["diff"] <= paired["ci"][1] <= 1
    assert result["models"]["b"]["prompt_strict"]["value"] == pytest.approx(1 / 3)
    assert result["by_instruction"]["a"] == {"change_case:english_lowercase": 1.0,
                                             "punctuation:no_comma": 0.5}
