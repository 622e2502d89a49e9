"""`xwin stage eval` end to end with tiny real models answering and a scripted judge over HTTP:
the numbers in results.json are recomputed here from the answers the stage wrote and the
judge's rule; a rerun makes no judge request and generates nothing."""

import json
import math
from pathlib import Path

import pytest
import yaml
from judge_test_server import (
    ScriptedJudgeServer,
    always_a,
    is_calibration_request,
    judged_requests,
    length_judge,
    merit,
    single_rating,
)

from xwin.core.errors import ConfigError, UserError
from xwin.data.mtbench import load_mtbench_questions
from xwin.judge.stats import length_controlled_win_rate, mcnemar_exact_p, wilson_interval
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
    # random tiny models sampled with one seed sometimes say the same thing), and the judge
    # gate's 24 calibration requests (6 questions x 2 foils x 2 orders)
    assert results["judge"]["verdicts"] == 12 + 12 + 12
    assert len(server.requests) == metrics["judge/requests"]
    assert len({json.dumps(r["messages"]) for r in server.requests}) == len(server.requests)
    assert len(judged_requests(server.requests)) > 24
    assert sum(map(is_calibration_request, server.requests)) == 24
    assert results["judge"]["unparseable"] == 0
    assert results["judge"]["swap_agreement"] == 1.0  # the scripted judge ignores positions
    gate = results["judge_gate"]  # the scripted judge knows the reference answers: it passes
    assert (gate["passed"], gate["calibration_accuracy"], gate["swap_agreement"]) == (True, 1.0, 1.0)
    assert gate["comparisons_swap_agreement"] == 1.0 and gate["unparseable_share"] == 0.0
    assert metrics["judge/gate_passed"] == 1.0

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

    # paired on the same (question, turn): the difference of a's and b's grades
    grade_pairs = [(single_rating(answers["a"]["mtbench"][str(q)][t]),
                    single_rating(answers["b"]["mtbench"][str(q)][t])) for q in QUESTION_IDS for t in (0, 1)]
    (paired,) = results["mtbench"]["single_paired"]
    assert (paired["model_x"], paired["model_y"], paired["n"]) == ("a", "b", 6)
    assert paired["difference"] == pytest.approx(sum(x - y for x, y in grade_pairs) / 6)
    assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"]

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
    # paired on the same instructions: McNemar on "beat the reference"
    wins = {m: [expected_outcome(o, r) == 1.0 for o, r in zip(answers[m]["alpaca"], refs)] for m in ("a", "b")}
    (paired,) = results["alpaca_paired"]
    b_only = sum(x and not y for x, y in zip(wins["a"], wins["b"]))
    c_only = sum(y and not x for x, y in zip(wins["a"], wins["b"]))
    assert (paired["mcnemar"]["b"], paired["mcnemar"]["c"]) == (b_only, c_only)
    assert paired["mcnemar"]["p_value"] == pytest.approx(mcnemar_exact_p(b_only, c_only))

    # the math question was graded against its reference answer
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 12 + 6 + 6
    report = (out / "report.md").read_text()
    assert "Judge checked: calibration accuracy 100.0%" in report
    assert "unreliable" not in report
    assert "### MT-bench, single-answer grading" in report and "| a | " in report
    assert "### AlpacaEval-style" in report and "![Win rates](win_rates.png)" in report
    assert "### Paired comparisons on the same prompts" in report and "| MT-bench grade | a | b | 6 |" in report
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
    (request,) = judged_requests(server.requests)  # the judge gate's calibration left out
    reference = load_mtbench_questions()[30].reference  # question 111
    assert load_mtbench_questions()[30].question_id == 111
    assert reference[0] in request["messages"][1]["content"]
    assert metrics["judge/requests"] == 1 + 24 and not math.isnan(metrics["mtbench/a/score"])


def test_constrained_verdicts_are_requested_when_configured(tmp_path, server, tiny_model_dir):
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)},
                      mtbench={"question_ids": [81], "turns": 1})
    config = yaml.safe_load(spec.read_text())
    config["config"]["judge"].update(constrain_verdict=True, max_tokens=64)
    spec.write_text(yaml.safe_dump(config))
    run_stage("eval", spec)
    (single,) = judged_requests(server.requests)
    assert single["structured_outputs"]["regex"].endswith(r"\[\[(10|[1-9])\]\]")
    assert single["max_tokens"] == 64
    calibration = [r for r in server.requests if is_calibration_request(r)]
    assert len(calibration) == 24  # the gate checks the judge as it judges: constrained too
    assert all(r["structured_outputs"]["regex"].endswith(r"\[\[[ABC]\]\]") for r in calibration)


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
    (request,) = judged_requests(server.requests)
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
    gate = results["judge_gate"]  # 24 calibration replies and 8 real ones, none with a verdict
    assert (gate["passed"], gate["unparseable_share"], gate["calibration_accuracy"]) == (False, 1.0, 0.0)
    assert gate["swap_agreement"] is None and (gate["replies"], gate["unparseable"]) == (32, 32)
    assert metrics["judge/gate_passed"] == 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_always_a_judge_is_flagged_unreliable_and_its_tables_go_under_the_warning(
        tmp_path, tiny_model_dir, second_tiny_model):
    alpaca, reference = write_alpaca(tmp_path)
    with ScriptedJudgeServer(reply=always_a) as server:
        spec = write_spec(tmp_path, server, {
            "model:a": str(tiny_model_dir), "model:b": str(second_tiny_model),
            "alpaca": str(alpaca), "reference": str(reference)},
            mtbench={"question_ids": [81, 111], "turns": 1})
        metrics = run_stage("eval", spec)
    out = committed(tmp_path)
    results = json.loads((out / "results.json").read_text())
    gate = results["judge_gate"]
    # always [[A]]: right in exactly one order of each calibration pair, never the same answer
    # in both orders; every reply parses
    assert gate["passed"] is False and gate["checked"] is True
    assert (gate["calibration_accuracy"], gate["swap_agreement"]) == (0.5, 0.0)
    assert gate["comparisons_swap_agreement"] == 0.0 and gate["unparseable_share"] == 0.0
    assert gate["thresholds"] == {"min_swap_agreement": 0.6, "min_calibration_accuracy": 0.8,
                                  "max_unparseable_share": 0.1}
    cal = gate["calibration"]
    assert (cal["requests"], cal["answered"], cal["correct"], cal["wrong"], cal["ties"]) == (24, 24, 12, 12, 0)
    assert {k: v["accuracy"] for k, v in cal["by_foil"].items()} == {"other_question": 0.5, "truncated": 0.5}
    assert len(gate["reasons"]) == 3  # accuracy, calibration swap agreement, comparisons' swap
    assert "calibration accuracy 50.0% < 80%" in gate["reasons"][0]
    # replies: 24 calibration + single 2 models x 2 questions + MT-bench pairwise 2 x 2 orders
    # + AlpacaEval 2 models x 3 x 2 orders (requests repeat where answers do; replies count all)
    assert gate["replies"] == 24 + 4 + 4 + 12
    records = read_jsonl(out / "calibration.jsonl")
    assert len(records) == 12 and {(r["verdict_x_first"], r["verdict_y_first"]) for r in records} == {("A", "A")}
    assert metrics["judge/gate_passed"] == 0 and metrics["judge/calibration_accuracy"] == 0.5
    assert metrics["judge/calibration_swap_agreement"] == 0 and metrics["judge/calibration_requests"] == 24
    assert cal["requests_sent"] == 24 and cal["server_start_s"] < 1  # an external endpoint
    print(f"calibration with the scripted judge: {cal['requests']} requests in {cal['seconds']:.2f} s")

    report = (out / "report.md").read_text()
    head = report.split("\n\n")[0]
    assert head.endswith(": judge unreliable") and "**Judge unreliable**" in report
    warning = report.index("**Judge unreliable**")
    assert warning < report.index("| accuracy on the calibration set | 50.0% | >= 80.0% | **failed** |")
    assert "| unparseable replies | 0.0% | <= 10.0% | ok |" in report
    judged = report.index("### Judged tables (judge unreliable: not results)")
    assert warning < judged < report.index("#### MT-bench, single-answer grading")
    assert judged < report.index("#### MT-bench, pairwise") < report.index("#### AlpacaEval-style")
    assert "\n### MT-bench" not in report and "\n### AlpacaEval" not in report
    assert report.index("### Judge\n") < judged  # the judge's own figures are not judged
    assert judged < report.index("![Win rates](win_rates.png)")
    # the numbers are still all there, to diagnose the judge
    assert results["mtbench"]["pairwise"][0]["inconsistent"] == 2
    assert metrics["alpaca/a/win_rate"] == 0.5


def test_a_length_biased_judge_fails_calibration_with_exactly_its_figures(tmp_path, tiny_model_dir):
    with ScriptedJudgeServer(reply=length_judge) as server:
        spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)},
                          mtbench={"question_ids": [81], "turns": 1})
        metrics = run_stage("eval", spec)
    out = committed(tmp_path)
    gate = json.loads((out / "results.json").read_text())["judge_gate"]
    records = read_jsonl(out / "calibration.jsonl")
    assert len(records) == 12
    # recomputed from the texts compared: the longer answer wins in both orders
    right = sum(2 for r in records if len(r["full"]) > len(r["foil"]))
    ties = sum(2 for r in records if len(r["full"]) == len(r["foil"]))
    assert gate["calibration_accuracy"] == pytest.approx(right / 24)
    assert gate["calibration"]["ties"] == ties and gate["swap_agreement"] == 1.0
    # the truncated copies are shorter, the other questions' answers longer: "longer wins"
    # is right on exactly half the set
    for r in records:
        if r["foil_kind"] == "truncated":
            words = r["full"].split()
            assert r["full"].startswith(r["foil"]) and len(r["foil"].split()) == round(0.15 * len(words))
        else:
            assert r["foil_question_id"] != r["question_id"] and len(r["foil"]) > len(r["full"])
    assert right == 12 and gate["passed"] is False and gate["comparisons_swap_agreement"] is None
    assert gate["reasons"] == [gate["reasons"][0]] and "calibration accuracy" in gate["reasons"][0]
    assert metrics["judge/gate_passed"] == 0


def test_the_gate_can_be_switched_off_and_a_rerun_calibrates_from_the_cache(
        tmp_path, server, tiny_model_dir):
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)},
                      mtbench={"question_ids": [81], "turns": 1})
    run_stage("eval", spec)
    assert sum(map(is_calibration_request, server.requests)) == 24
    sent = len(server.requests)
    metrics = run_stage("eval", spec)  # every calibration reply comes from the cache
    assert len(server.requests) == sent and metrics["judge/gate_passed"] == 1
    gate = json.loads((committed(tmp_path) / "results.json").read_text())["judge_gate"]
    assert gate["calibration"]["requests_sent"] == 0 and gate["calibration"]["requests"] == 24

    config = yaml.safe_load(spec.read_text())
    config["config"]["judge_gate"] = {"enabled": False}
    spec.write_text(yaml.safe_dump(config))
    metrics = run_stage("eval", spec)
    out = committed(tmp_path)
    gate = json.loads((out / "results.json").read_text())["judge_gate"]
    assert (gate["checked"], gate["passed"]) == (False, None)
    assert "judge/gate_passed" not in metrics and not (out / "calibration.jsonl").exists()
    assert "Judge not checked" in (out / "report.md").read_text()


def test_a_calibration_set_larger_than_the_shipped_data_fails_before_any_answer(
        tmp_path, server, tiny_model_dir):
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir)},
                      judge_gate={"questions": 21})
    with pytest.raises(ConfigError, match="judge_gate.questions"):
        run_stage("eval", spec)
    assert server.requests == []


def test_verifiable_prompts_are_checked_per_model_with_paired_differences(
        tmp_path, server, tiny_model_dir, second_tiny_model):
    """The gold metric needs no judge verdict: the numbers come from the answers the stage
    wrote, re-checked here with the checkers' own aggregate (score_responses)."""
    from xwin.judge.verifiable import Constraint, check, score_responses

    constraints = [[{"instruction_id": "punctuation:no_comma"}],
                   [{"instruction_id": "change_case:english_lowercase"},
                    {"instruction_id": "punctuation:no_comma"}],
                   [{"instruction_id": "length_constraints:number_words",
                     "kwargs": {"num_words": 3, "relation": "at least"}}]]
    prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Tell me about {topic}."}],
                "constraints": cs} for i, (topic, cs) in enumerate(zip(["cats", "rain", "tea"], constraints))]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in prompts))
    spec = write_spec(tmp_path, server, {
        "model:a": str(tiny_model_dir), "model:b": str(second_tiny_model),
        "prompts": str(tmp_path / "prompts.jsonl")},
        mtbench={"question_ids": QUESTION_IDS[:1], "single": False, "pairwise": False},
        judge_gate={"enabled": False})
    metrics = run_stage("eval", spec)
    out = committed(tmp_path)
    results = json.loads((out / "results.json").read_text())
    ifeval = results["verifiable"]["ifeval"]
    assert ifeval["n_prompts"] == 3 and set(ifeval["models"]) == {"a", "b"}
    checked = {}
    for label in ("a", "b"):
        answers = json.loads((out / "answers" / f"{label}.json").read_text())["prompts"]
        items = [(p["messages"][0]["content"], [Constraint(**c) for c in p["constraints"]], a)
                 for p, a in zip(prompts, answers)]
        expected = score_responses(items)
        summary = ifeval["models"][label]
        for level in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
            assert summary[level]["value"] == pytest.approx(expected[level]), (label, level)
            assert metrics[f"ifeval/{label}/{level}"] == pytest.approx(expected[level])
        assert summary["instruction_strict"]["n"] == 4
        checked[label] = [all(check(a, c, prompt)[0] for c in cs) for prompt, cs, a in items]
    paired = ifeval["paired"]["b_vs_a"]
    assert paired["diff"] == pytest.approx((sum(checked["b"]) - sum(checked["a"])) / 3)
    assert paired["only_x"] == sum(b and not a for a, b in zip(checked["a"], checked["b"]))
    report = (out / "report.md").read_text()
    assert "Verifiable instruction following" in report and "b vs a" in report


def test_the_gold_metric_alone_needs_no_judge_and_checks_none(tmp_path, server, tiny_model_dir):
    """MT-bench off, no AlpacaEval, constraint prompts only: eval answers and checks them, sends
    the judge nothing (not even the gate's calibration: there is no verdict to believe), and
    says the judge was not checked; with nothing at all to evaluate it is a config error."""
    prompt = {"id": "p0", "messages": [{"role": "user", "content": "Tell me about tea."}],
              "constraints": [{"instruction_id": "punctuation:no_comma"}]}
    (tmp_path / "prompts.jsonl").write_text(json.dumps(prompt) + "\n")
    spec = write_spec(tmp_path, server, {"model:a": str(tiny_model_dir),
                                         "prompts": str(tmp_path / "prompts.jsonl")},
                      mtbench={"enabled": False})
    metrics = run_stage("eval", spec)
    assert server.requests == [] and "judge/gate_passed" not in metrics
    results = json.loads((committed(tmp_path) / "results.json").read_text())
    assert results["verifiable"]["ifeval"]["models"]["a"]["prompt_strict"]["n"] == 1
    assert (results["judge_gate"]["checked"], results["judge_gate"]["passed"]) == (False, None)

    (tmp_path / "empty").mkdir()
    empty = write_spec(tmp_path / "empty", server, {"model:a": str(tiny_model_dir)},
                       mtbench={"enabled": False})
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        run_stage("eval", empty)
