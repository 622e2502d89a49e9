"""`xwin stage eval` end to end with tiny real models answering and a scripted judge over HTTP:
the numbers in results.json are recomputed here from the answers the stage wrote and the
judge's rule; a rerun makes no judge request and generates nothing."""

import json
import math
from pathlib import Path

import pytest
import yaml
from judge_test_server import ScriptedJudgeServer, merit, single_rating

from xwin.core.errors import ConfigError, UserError
from xwin.data.mtbench import load_mtbench_questions
from xwin.judge.stats import length_controlled_win_rate, wilson_interval
from xwin.stages.registry import run_stage

QUESTION_IDS = [81, 101, 111]  # writing; reasoning and math (graded against references)


@pytest.fixture(scope="module")
def second_tiny_model(tiny_model_dir, tmp_path_factory) -> Path:
    from xwin.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-b") / "model",
                            tokenizer_source=tiny_model_dir, seed=1)


@pytest.fixture
def server():
    with ScriptedJudgeServer() as s:
        yield s


def write_spec(tmp_path, server, inputs, **config) -> Path:
    spec = {
        "stage": "eval", "run_id": "t", "output": "eval/test",
        "store": {"kind": "local", "root": str(tmp_path / "store")},
        "workdir": str(tmp_path / "work"),
        "inputs": inputs,
        "config": {
            "judge": {"base_url": server.base_url, "model": server.model,
                      "backoff_initial_s": 0.01, "max_concurrency": 4},
            "engine": {"backend": "hf", "dtype": "float32"},
            # random tiny models repeat one token when greedy: sample (seeded) to get words
            "generation": {"temperature": 1.0, "max_new_tokens": 12},
            "mtbench": {"question_ids": QUESTION_IDS},
            **config,
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def committed(tmp_path) -> Path:
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    return open_store(StoreConfig(kind="local", root=tmp_path / "store")).fetch("eval/test")


def write_alpaca(tmp_path) -> tuple[Path, Path]:
    instructions = [{"instruction": "Name a colour.", "dataset": "test"},
                    {"instruction": "Add two numbers.", "input": "2 and 3"},
                    {"instruction": "Say hello in French."}]
    references = [{"instruction": "Name a colour.", "output": "Blue."},
                  {"instruction": "Add two numbers.", "input": "2 and 3",
                   "output": "2 + 3 = 5, which is the sum of the two numbers you gave."},
                  {"instruction": "Say hello in French.", "output": "Bonjour", "generator": "ref"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(instructions))
    (tmp_path / "reference.jsonl").write_text("\n".join(json.dumps(r) for r in references))
    return tmp_path / "alpaca.json", tmp_path / "reference.jsonl"


def expected_outcome(x: str, y: str) -> float:
    return 1.0 if merit(x) > merit(y) else 0.0 if merit(y) > merit(x) else 0.5


def test_eval_two_models_mtbench_and_alpaca_then_rerun_from_cache(
        tmp_path, server, tiny_model_dir, second_tiny_model):
    alpaca, reference = write_alpaca(tmp_path)
    spec = write_spec(tmp_path, server, {
        "model:a": str(tiny_model_dir), "model:b": str(second_tiny_model),
        "alpaca": str(alpaca), "reference": str(reference)})
    metrics = run_stage("eval", spec)
    out = committed(tmp_path)
    results = json.loads((out / "results.json").read_text())
    answers = {m: json.loads((out / "answers" / f"{m}.json").read_text()) for m in ("a", "b")}
    questions = {q.question_id: q for q in load_mtbench_questions() if q.question_id in QUESTION_IDS}

    # verdicts: single 2 models x 3 questions x 2 turns; pairwise 3 x 2 turns x 2 orders;
    # AlpacaEval 2 models x 3 instructions x 2 orders. Requests: as many, less repeats (two
    # random tiny models sampled with one seed sometimes say the same thing)
    assert results["judge"]["verdicts"] == 12 + 12 + 12
    assert len(server.requests) == metrics["judge/requests"]
    assert len({json.dumps(r["messages"]) for r in server.requests}) == len(server.requests) > 24
    assert results["judge"]["unparseable"] == 0
    assert results["judge"]["swap_agreement"] == 1.0  # the scripted judge ignores positions

    # MT-bench single grades, recomputed from the answers with the judge's rule
    for model in ("a", "b"):
        grades = {(qid, t): single_rating(answers[model]["mtbench"][str(qid)][t - 1])
                  for qid in QUESTION_IDS for t in (1, 2)}
        summary = results["mtbench"]["single"][model]
        assert summary["score"] == pytest.approx(sum(grades.values()) / 6)
        assert summary["turns"]["2"] == pytest.approx(sum(grades[q, 2] for q in QUESTION_IDS) / 3)
        math_q = next(q for q in QUESTION_IDS if questions[q].category == "math")
        assert summary["categories"]["math"] == pytest.approx((grades[math_q, 1] + grades[math_q, 2]) / 2)
        assert metrics[f"mtbench/{model}/score"] == pytest.approx(summary["score"])

    # MT-bench pairwise: a against b on every question and turn, both orders
    scores = [expected_outcome(answers["a"]["mtbench"][str(q)][t], answers["b"]["mtbench"][str(q)][t])
              for q in QUESTION_IDS for t in (0, 1)]
    (pair,) = results["mtbench"]["pairwise"]
    assert (pair["model_x"], pair["model_y"], pair["n"]) == ("a", "b", 6)
    assert pair["win_rate"] == pytest.approx(sum(scores) / 6)
    assert (pair["ci_low"], pair["ci_high"]) == pytest.approx(wilson_interval(sum(scores), 6))
    assert pair["tie"] == scores.count(0.5) and pair["inconsistent"] == 0

    # AlpacaEval-style against the reference outputs, length-controlled too
    refs = [json.loads(line)["output"] for line in reference.read_text().splitlines()]
    for model in ("a", "b"):
        outs = answers[model]["alpaca"]
        s = [expected_outcome(o, r) for o, r in zip(outs, refs)]
        row = results["alpaca"][model]
        assert row["win_rate"] == pytest.approx(sum(s) / 3)
        assert row["lc_win_rate"] == pytest.approx(length_controlled_win_rate(
            s, [len(o) for o in outs], [len(r) for r in refs]))
        assert row["avg_length"] == pytest.approx(sum(map(len, outs)) / 3)

    # the math question was graded against its reference answer
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 12 + 6 + 6
    report = (out / "report.md").read_text()
    assert "### MT-bench, single-answer grading" in report and "| a | " in report
    assert "### AlpacaEval-style" in report and "![Win rates](win_rates.png)" in report
    for png in ("mtbench_scores.png", "win_rates.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # rerun: answers and verdicts all come from the caches
    sent = len(server.requests)
    metrics2 = run_stage("eval", spec)
    assert len(server.requests) == sent
    assert metrics2["judge/requests"] == 0 and metrics2["answers/generated"] == 0
    assert json.loads((committed(tmp_path) / "results.json").read_text())["mtbench"] == results["mtbench"]


def test_reference_question_uses_the_reference_prompt(tmp_path, server, tiny_model_dir):
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)},
                      mtbench={"question_ids": [111], "turns": 1, "pairwise": False})
    metrics = run_stage("eval", spec)
    (request,) = server.requests
    reference = load_mtbench_questions()[30].reference  # question 111
    assert load_mtbench_questions()[30].question_id == 111
    assert reference[0] in request["messages"][1]["content"]
    assert metrics["judge/requests"] == 1 and not math.isnan(metrics["mtbench/a/score"])


def test_constrained_verdicts_are_requested_when_configured(tmp_path, server, tiny_model_dir):
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)},
                      mtbench={"question_ids": [81], "turns": 1})
    config = yaml.safe_load(spec.read_text())
    config["config"]["judge"].update(constrain_verdict=True, max_tokens=64)
    spec.write_text(yaml.safe_dump(config))
    run_stage("eval", spec)
    assert server.requests[0]["structured_outputs"]["regex"].endswith(r"\[\[(10|[1-9])\]\]")
    assert server.requests[0]["max_tokens"] == 64


def test_missing_models_or_reference_are_config_errors(tmp_path, server, tiny_model_dir):
    with pytest.raises(ConfigError, match="no model to evaluate"):
        run_stage("eval", write_spec(tmp_path, server, {}))
    alpaca, _ = write_alpaca(tmp_path)
    with pytest.raises(UserError, match=r"alpaca.json: no reference output for instruction 0"):
        run_stage("eval", write_spec(tmp_path, server, {"model:a": str(tiny_model_dir),
                                                        "alpaca": str(alpaca)}))
    assert server.requests == []


def test_reward_model_scores_every_answer_in_its_context(tmp_path, server, tiny_model_dir):
    from xwin.models.loading import load_tokenizer
    from xwin.models.reward import RewardModel, load_reward_model

    tokenizer = load_tokenizer(tiny_model_dir)
    rm_dir = tmp_path / "rm"
    rm_dir.mkdir()
    RewardModel.from_language_model(tiny_model_dir).save(rm_dir, tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "messages": [{"role": "user", "content": "Hi!"}]}) + "\n")
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir), "reward_model": str(rm_dir),
                                         "prompts": str(prompts)},
                      mtbench={"question_ids": [81], "pairwise": False})
    metrics = run_stage("eval", spec)
    out = committed(tmp_path)
    answers = json.loads((out / "answers" / "a.json").read_text())
    q = load_mtbench_questions()[0]
    turn1, turn2 = answers["mtbench"]["81"]
    contexts = [[{"role": "user", "content": q.turns[0]}],
                [{"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": turn1},
                 {"role": "user", "content": q.turns[1]}],
                [{"role": "user", "content": "Hi!"}]]
    expected = load_reward_model(rm_dir).score(tokenizer, contexts, [turn1, turn2, answers["prompts"][0]])
    reward = json.loads((out / "results.json").read_text())["reward"]["a"]
    assert reward["n"] == 3
    assert reward["mean"] == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert metrics["reward/a/mean"] == pytest.approx(reward["mean"])
    assert "### Reward-model scores" in (out / "report.md").read_text()


def test_a_judge_without_endpoint_or_model_fails_before_any_answer(tmp_path, server, tiny_model_dir):
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)})
    config = yaml.safe_load(spec.read_text())
    del config["config"]["judge"]["base_url"]
    spec.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="judge: set judge.base_url"):
        run_stage("eval", spec)
    assert not (tmp_path / "work" / "t" / "eval" / "answers-cache.sqlite").exists()


@pytest.mark.parametrize("typed", [False, True])
def test_mtbench_question_files_in_fastchat_or_typed_format(tmp_path, server, tiny_model_dir, typed):
    question = {"question_id": 7, "category": "math", "turns": ["What is 2+2?"]}
    if typed:  # `xwin data import-mtbench` output: `reference` holds the graders' answers
        question |= {"reference": ["TYPED-REF 4"], "ground_truth": ["4"]}
    else:  # FastChat's layout: `reference` is the short expected answer, the graders'
        # reference answers live in reference_answer/gpt-4.jsonl beside the questions
        question |= {"reference": ["4"]}
        (tmp_path / "reference_answer").mkdir()
        (tmp_path / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(
            {"question_id": 7, "choices": [{"turns": ["FASTCHAT-REF 4"]}]}) + "\n")
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps(question) + "\n")
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir), "mtbench": str(path)},
                      mtbench={"turns": 1, "pairwise": False})
    run_stage("eval", spec)
    (request,) = server.requests
    expected = "TYPED-REF 4" if typed else "FASTCHAT-REF 4"
    assert f"[The Start of Reference Answer]\n{expected}\n" in request["messages"][1]["content"]


def test_a_judge_that_never_answers_in_format_is_counted_not_guessed(tmp_path, tiny_model_dir):
    with ScriptedJudgeServer(reply=lambda body: "Both answers are fine.") as server:
        spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir), "model:b": str(tiny_model_dir)},
                          mtbench={"question_ids": [81]})
        metrics = run_stage("eval", spec)
    results = json.loads((committed(tmp_path) / "results.json").read_text())  # strict JSON
    assert results["judge"]["unparseable"] == results["judge"]["verdicts"] == 4 + 4
    assert results["mtbench"]["single"]["a"]["score"] is None
    assert results["mtbench"]["pairwise"][0]["error"] == 2
    assert results["judge"]["swap_agreement"] is None
    assert "mtbench/a/score" not in metrics and metrics["judge/unparseable"] == 8
