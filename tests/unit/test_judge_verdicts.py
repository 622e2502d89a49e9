import re

import pytest

from xwin.judge.verdicts import (
    Outcome,
    combine_swapped,
    flip,
    outcome_counts,
    parse_pairwise,
    parse_rating,
    swap_agreement,
    verdict_constraint,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Helpful and correct. Rating: [[8]]", 8.0),
        ("Rating: [[ 7.5 ]]", 7.5),
        ("Rating: [[10]]", 10.0),
        # the judge echoed the prompt's example before its own verdict: the last one counts
        ('Format: "Rating: [[5]]". My rating: [[3]]', 3.0),
        ("Rating: [8]", None),  # single brackets are not the format
        ("Rating: 8/10", None),
        ("Rating: [[11]]", None),  # out of the 1-10 scale
        ("Rating: [[0]]", None),
        ("", None),
        (None, None),
    ],
)
def test_rating_is_read_strictly(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Assistant A is more accurate. [[A]]", "A"),
        ("[[B]]", "B"),
        ("Both are equally good: [[C]]", "C"),
        ("[[A]] ... on reflection still [[A]]", "A"),  # repeated, same verdict
        ('Output "[[A]]" if A is better, "[[B]]" if B is better: [[B]]', None),  # ambiguous
        ("A is better.", None),
        ("[A]", None),
        (None, None),
    ],
)
def test_pairwise_verdict_must_be_unambiguous(text, expected):
    assert parse_pairwise(text) == expected


@pytest.mark.parametrize(
    "x_first, y_first, expected",
    [
        ("A", "B", Outcome.WIN),  # X shown first wins, X shown second wins
        ("B", "A", Outcome.LOSS),
        ("C", "C", Outcome.TIE),
        ("A", "A", Outcome.INCONSISTENT),  # whoever is first wins: position bias
        ("B", "B", Outcome.INCONSISTENT),
        ("A", "C", Outcome.INCONSISTENT),
        ("C", "B", Outcome.INCONSISTENT),
        (None, "B", Outcome.ERROR),
        ("A", None, Outcome.ERROR),
    ],
)
def test_swapped_verdicts_count_only_when_both_orders_agree(x_first, y_first, expected):
    assert combine_swapped(x_first, y_first) is expected


def test_swapping_the_roles_flips_the_outcome():
    for x_first in "ABC":
        for y_first in "ABC":
            assert combine_swapped(y_first, x_first) is flip(combine_swapped(x_first, y_first))


def test_swap_agreement_ignores_unparsed_comparisons():
    outcomes = [Outcome.WIN, Outcome.INCONSISTENT, Outcome.TIE, Outcome.ERROR, Outcome.LOSS]
    assert swap_agreement(outcomes) == 3 / 4
    assert swap_agreement([Outcome.ERROR]) is None
    assert outcome_counts(outcomes) == {
        "win": 1, "loss": 1, "tie": 1, "inconsistent": 1, "error": 1}


def test_verdict_constraint_accepts_only_a_short_rationale_then_one_verdict():
    single = verdict_constraint("single", max_tokens=40)["structured_outputs"]["regex"]
    assert re.fullmatch(single, "Good answer. Rating: [[7]]")
    assert re.fullmatch(single, "[[10]]")
    assert not re.fullmatch(single, "Rating: [[11]]")
    assert not re.fullmatch(single, "x" * 25 + "[[7]]")  # rationale capped at 40 - 16 chars
    pair = verdict_constraint("pairwise", max_tokens=40)["structured_outputs"]["regex"]
    assert re.fullmatch(pair, "B is better. [[B]]")
    assert not re.fullmatch(pair, "[[A]] or [[B]]")
    # whatever the constraint lets through, the strict parsers read
    assert parse_pairwise("B is better. [[B]]") == "B"
