"""The compliance order that method `verifiable` of the annotate stage pairs replies by
(xwin/judge/verifiable_pairs.py), on hand-made constraints and replies checked by the real
checkers: prompt-level strict, then prompt-level loose, then the shares of instructions followed
strictly and loosely; equal replies are a tie. Offline, fast."""

import pytest

from xwin.judge.verifiable import Constraint
from xwin.judge.verifiable_pairs import (
    Compliance,
    InstructionVerdict,
    assess,
    compliance_summary,
    decisive,
    pair_by_compliance,
)

NO_COMMA = Constraint(instruction_id="punctuation:no_comma")
LOWERCASE = Constraint(instruction_id="change_case:english_lowercase")
JSON = Constraint(instruction_id="detectable_format:json_format")
ZEBRA = Constraint(instruction_id="keywords:existence", kwargs={"keywords": ["zebra"]})
CASE_AND_COMMAS = [NO_COMMA, LOWERCASE]

FULL = "this is my answer and i wrote it in english for you today."  # both followed
HALF = "This is my answer and I wrote it in English for you today."  # no comma only
NONE = "This is my answer, and I wrote it in English for you today."  # neither
FULL_TOO = "here is another answer and it is written in english for you."


def test_assess_checks_every_instruction_strictly_and_loosely():
    half = assess(HALF, CASE_AND_COMMAS, "Answer me.")
    assert [(v.instruction_id, v.strict, v.loose) for v in half.verdicts] == [
        ("punctuation:no_comma", True, True), ("change_case:english_lowercase", False, False)]
    assert (half.prompt_strict, half.prompt_loose) == (False, False)
    assert (half.instruction_strict, half.instruction_loose) == (0.5, 0.5)
    assert half.key() == (0.0, 0.0, 0.5, 0.5)
    assert half.record() == {
        "prompt_strict": False, "prompt_loose": False,
        "instruction_strict": 0.5, "instruction_loose": 0.5,
        "instructions": [
            {"instruction_id": "punctuation:no_comma", "kwargs": {}, "strict": True,
             "loose": True},
            {"instruction_id": "change_case:english_lowercase", "kwargs": {}, "strict": False,
             "loose": False}]}
    with pytest.raises(ValueError, match="without constraints"):
        assess(HALF, [], "Answer me.")


def test_a_fully_compliant_reply_beats_a_half_compliant_one():
    full, half = assess(FULL, CASE_AND_COMMAS, ""), assess(HALF, CASE_AND_COMMAS, "")
    assert full.prompt_strict and not half.prompt_strict
    assert decisive(full, half) == decisive(half, full) == "prompt_strict"
    [pair] = pair_by_compliance([half, full])
    assert (pair.first.response, pair.second.response) == (FULL, HALF)
    assert pair.decided_by == "prompt_strict" and not pair.tied


def test_half_compliant_beats_non_compliant_by_the_share_followed_strictly():
    half, none = assess(HALF, CASE_AND_COMMAS, ""), assess(NONE, CASE_AND_COMMAS, "")
    [pair] = pair_by_compliance([none, half])
    assert (pair.first.response, pair.decided_by) == (HALF, "instruction_strict")


def test_a_strict_tie_is_broken_by_loose_compliance():
    # An intro line before the JSON: strictly not JSON, loosely (first line dropped) it is.
    intro = assess('Here it is:\n{"a": 1}', [JSON, NO_COMMA], "")
    prose = assess("Here it is: a equals one.", [JSON, NO_COMMA], "")
    assert (intro.prompt_strict, prose.prompt_strict) == (False, False)
    assert intro.instruction_strict == prose.instruction_strict == 0.5
    [pair] = pair_by_compliance([prose, intro])
    assert (pair.first, pair.second, pair.decided_by) == (intro, prose, "prompt_loose")


def test_the_last_criterion_is_the_share_followed_loosely():
    loosely = assess('Intro, line:\n{"a": 1}', [JSON, NO_COMMA, ZEBRA], "")  # 0/3 strict, 2/3 loose
    neither = assess("Nothing, here at all.", [JSON, NO_COMMA, ZEBRA], "")  # 0/3, 0/3
    assert loosely.key() == (0.0, 0.0, 0.0, pytest.approx(2 / 3))
    assert decisive(loosely, neither) == "instruction_loose"


def test_two_fully_compliant_replies_are_a_tie_in_their_given_order():
    full, full_too = assess(FULL, CASE_AND_COMMAS, ""), assess(FULL_TOO, CASE_AND_COMMAS, "")
    assert decisive(full, full_too) is None
    [pair] = pair_by_compliance([full, full_too])
    assert pair.tied and (pair.first, pair.second) == (full, full_too)


def test_best_worst_pairs_the_top_against_the_bottom_and_keeps_order_among_equals():
    full, half, none = (assess(t, CASE_AND_COMMAS, "") for t in (FULL, HALF, NONE))
    full_too = assess(FULL_TOO, CASE_AND_COMMAS, "")
    [pair] = pair_by_compliance([half, none, full_too, full])
    assert (pair.first, pair.second, pair.decided_by) == (full_too, none, "prompt_strict")
    # all tied: the first reply against the last
    [tie] = pair_by_compliance([full, full_too, full])
    assert tie.tied and (tie.first.response, tie.second.response) == (FULL, FULL)
    assert pair_by_compliance([full]) == [] and pair_by_compliance([]) == []


def test_all_pairs_every_two_replies_better_first():
    full, half, none = (assess(t, CASE_AND_COMMAS, "") for t in (FULL, HALF, NONE))
    full_too = assess(FULL_TOO, CASE_AND_COMMAS, "")
    pairs = pair_by_compliance([none, full, half, full_too], "all")
    assert [(p.first.response, p.second.response, p.decided_by) for p in pairs] == [
        (FULL, NONE, "prompt_strict"), (HALF, NONE, "instruction_strict"),
        (FULL_TOO, NONE, "prompt_strict"), (FULL, HALF, "prompt_strict"),
        (FULL, FULL_TOO, None), (FULL_TOO, HALF, "prompt_strict")]
    with pytest.raises(ValueError, match="unknown pairing"):
        pair_by_compliance([full, half], "random")


def test_compliance_summary_over_checked_replies():
    replies = [assess(t, CASE_AND_COMMAS, "") for t in (FULL, HALF, NONE, FULL_TOO)]
    assert compliance_summary(replies) == {
        "responses_checked": 4, "prompt_strict": 0.5, "prompt_loose": 0.5,
        "instruction_strict": 5 / 8, "instruction_loose": 5 / 8}
    assert compliance_summary([]) == {"responses_checked": 0}


def test_a_compliance_needs_an_instruction():
    with pytest.raises(ValueError, match="at least one instruction"):
        Compliance("reply", ())
    one = Compliance("reply", (InstructionVerdict("punctuation:no_comma", {}, False, True),))
    assert one.key() == (0.0, 1.0, 0.0, 1.0)
