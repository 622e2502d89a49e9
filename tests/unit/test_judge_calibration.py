"""The judge gate's parts without an endpoint: the calibration set built from the shipped
MT-bench data, the counting of calibration verdicts, the gate's thresholds, and the report
fragment it shapes."""

import pytest

from xwin.core.errors import ConfigError
from xwin.data.mtbench import load_mtbench_questions
from xwin.judge import report
from xwin.judge.calibration import (
    MIN_REFERENCE_WORDS,
    calibration_set,
    judge_gate,
    reference_questions,
    summarize_calibration,
    truncate_words,
)
from xwin.judge.config import JudgeGateConfig
from xwin.judge.verdicts import Outcome, combine_swapped


def test_truncate_words_keeps_the_first_words_and_their_spacing():
    text = "one two\nthree  four five six seven eight nine ten"
    assert truncate_words(text, 0.15) == "one two"  # round(1.5) = 2 words
    assert truncate_words(text, 0.35) == "one two\nthree  four"  # round(3.5) = 4 words
    assert truncate_words("alpha beta", 0.01) == "alpha"  # at least one word
    assert truncate_words("alpha beta", 0.99) == "alpha"  # never the whole text
    assert truncate_words("", 0.5) == ""


def test_the_calibration_set_is_seeded_and_made_of_known_answers():
    cfg = JudgeGateConfig()
    items = calibration_set(cfg)
    assert len(items) == 6 * 2 and items == calibration_set(cfg)
    assert calibration_set(JudgeGateConfig(seed=1)) != items
    refs = {q.question_id: q for q in load_mtbench_questions() if q.reference}
    assert len({it.question_id for it in items}) == 6
    for it in items:
        q = refs[it.question_id]
        assert it.full == q.reference[0] and it.question == q.turns[0]
        assert len(it.full.split()) >= MIN_REFERENCE_WORDS
        if it.foil_kind == "truncated":
            assert it.full.startswith(it.foil) and len(it.foil) < len(it.full)
            assert len(it.foil.split()) == round(0.15 * len(it.full.split()))
        else:  # another question's reference, longer where one is
            assert it.foil_question_id != it.question_id
            assert it.foil == refs[it.foil_question_id].reference[0]
            assert len(it.foil) > len(it.full) or all(
                len(o.reference[0]) <= len(it.foil) for o in reference_questions()
                if o.question_id != it.question_id)
    only_truncated = calibration_set(JudgeGateConfig(foils=["truncated"], questions=3))
    assert [it.foil_kind for it in only_truncated] == ["truncated"] * 3


def test_too_many_calibration_questions_is_a_config_error():
    pool = reference_questions()
    with pytest.raises(ConfigError, match="judge_gate.questions = 3: only 2"):
        calibration_set(JudgeGateConfig(questions=3), questions=pool[:2])


def record(x_first, y_first, kind="truncated", refused=()):
    """A calibration record as run_calibration writes it (full reference = X)."""
    return {"question_id": 1, "foil_kind": kind, "verdict_x_first": x_first,
            "verdict_y_first": y_first, "outcome": combine_swapped(x_first, y_first).value,
            "judgment_x_first": None if "x" in refused else f"... [[{x_first}]]",
            "judgment_y_first": None if "y" in refused else f"... [[{y_first}]]",
            "correct_full_first": x_first == "A", "correct_full_second": y_first == "B"}


def test_calibration_counts_every_order_and_misses_are_misses():
    records = [record("A", "B"),  # right both ways
               record("A", "A", "other_question"),  # position bias: right once
               record("C", "C"),  # a tie is a miss, but consistent
               record(None, "B", "other_question"),  # unparseable first order
               record(None, "B", refused="x")]  # the endpoint refused the first order
    s = summarize_calibration(records)
    assert (s["requests"], s["answered"], s["refused"], s["unparseable"]) == (10, 9, 1, 1)
    assert (s["correct"], s["ties"], s["wrong"]) == (2 + 1 + 0 + 1 + 1, 2, 1)
    assert s["accuracy"] == pytest.approx(5 / 9)
    assert s["swap_agreement"] == pytest.approx(2 / 3)  # A/B and C/C agree, A/A does not
    assert s["by_foil"]["other_question"] == {"requests": 4, "correct": 2, "accuracy": 0.5}
    assert s["by_foil"]["truncated"]["accuracy"] == pytest.approx(3 / 5)


def summary(accuracy=1.0, swap=1.0, answered=24, unparseable=0):
    return {"accuracy": accuracy, "swap_agreement": swap, "answered": answered,
            "unparseable": unparseable, "correct": round((accuracy or 0) * answered),
            "requests": 24, "questions": [1, 2], "by_foil": {"truncated": {}}, "seconds": 1.5,
            "requests_sent": 24}


def test_the_gate_passes_at_its_thresholds_and_names_every_failure():
    cfg = JudgeGateConfig()
    ok = judge_gate(cfg, summary(0.8, 0.6), [Outcome.WIN, Outcome.LOSS], replies=76, unparseable=10)
    assert ok["passed"] is True and ok["reasons"] == []
    assert ok["unparseable_share"] == pytest.approx(10 / 100)  # (10 + 0) / (76 + 24): at the limit
    bad = judge_gate(cfg, summary(0.75, 0.5, unparseable=1),
                     [Outcome.WIN, Outcome.INCONSISTENT, Outcome.INCONSISTENT], replies=6, unparseable=3)
    assert bad["passed"] is False and bad["comparisons_swap_agreement"] == pytest.approx(1 / 3)
    assert bad["unparseable_share"] == pytest.approx(4 / 30)
    assert len(bad["reasons"]) == 4
    assert bad["reasons"][0].startswith("calibration accuracy 75.0% < 80%: the judge named the "
                                        "full reference in 18 of 24 verdicts")
    assert bad["reasons"][1].startswith("swap agreement on the calibration set 50.0% < 60%")
    assert bad["reasons"][2] == "swap agreement on the model comparisons 33.3% < 60%"
    assert bad["reasons"][3] == "unparseable replies 13.3% > 10% (4 of 30)"
    unknown = judge_gate(cfg, summary(None, None, answered=0), [], replies=0, unparseable=0)
    assert unknown["passed"] is False and len(unknown["reasons"]) == 3  # none answered, no swap, no reply
    assert unknown["comparisons_swap_agreement"] is None  # no model comparison: not a reason
    off = judge_gate(cfg, None, [Outcome.WIN], replies=3, unparseable=0)
    assert (off["checked"], off["passed"], off["reasons"]) == (False, None, [])


def results_with(gate: dict | None) -> dict:
    row = {"win_rate": 0.5, "ci_low": 0.1, "ci_high": 0.9, "win": 0, "loss": 0, "tie": 0,
           "inconsistent": 4, "error": 0, "swap_agreement": 0.0, "n": 4}
    results = {"judge": {"model": "j", "stats": {"requests": 3, "retries": 0, "errors": 0,
                                                "cache_hits": 0}, "unparseable": 0, "verdicts": 8,
                         "swap_agreement": 0.0},
               "mtbench": {"single": {"a": {"score": 1.0, "turns": {"1": 1.0}, "categories": {},
                                            "rated": 2, "judged": 2}},
                           "pairwise": [{"model_x": "a", "model_y": "b", **row}]},
               "alpaca": {"a": {**row, "lc_win_rate": 0.5, "avg_length": 10,
                                "reference_avg_length": 20}},
               "reward": {"a": {"mean": 0.25, "n": 2}}, "confidence": 0.95,
               "plots": ["win_rates.png"]}
    if gate is not None:
        results["judge_gate"] = gate
    return results


def test_a_failed_gate_puts_the_warning_first_and_the_judged_tables_under_it():
    gate = judge_gate(JudgeGateConfig(), summary(0.5, 0.0), [Outcome.INCONSISTENT] * 4,
                      replies=8, unparseable=0)
    md = report.markdown(results_with(gate))
    lines = md.splitlines()
    assert lines[0] == "## Evaluation (judge: `j`): judge unreliable"
    assert lines[2].startswith("**Judge unreliable**")
    assert "| swap agreement, model comparisons | 0.0% | >= 60.0% | **failed** |" in md
    assert md.index("### Reward-model scores") < md.index("### Judged tables")
    assert md.index("### Judged tables") < md.index("#### MT-bench, single-answer grading") \
        < md.index("#### MT-bench, pairwise") < md.index("#### AlpacaEval-style") < md.index("![Win rates]")
    assert report.gate_failed(results_with(gate))


def test_a_passed_or_unchecked_gate_reads_as_before_plus_one_line():
    before = report.markdown(results_with(None))  # results of an eval before the gate existed
    assert before.startswith("## Evaluation (judge: `j`)\n\n### MT-bench, single-answer grading")
    passed = report.markdown(results_with(judge_gate(JudgeGateConfig(), summary(), [Outcome.WIN],
                                                     replies=8, unparseable=0)))
    head, rest = passed.split("\n\n", 2)[1], passed.split("\n\n", 2)[2]
    assert head.startswith("Judge checked: calibration accuracy 100.0% (>= 80.0%)")
    assert rest == before.split("\n\n", 1)[1]
    off = report.markdown(results_with(judge_gate(JudgeGateConfig(), None, [], 0, 0)))
    assert off.split("\n\n")[1].startswith("Judge not checked")
    assert not report.gate_failed(results_with(None))
