"""`xwin stage annotate`: Xwin-Pair-style pairs from a scripted judge over HTTP. Responses carry
`quality=N` markers the judge rewards, or markers that make it tie, follow positions or
answer without a verdict, so every kept and dropped pair is known in advance. Method
`verifiable` labels pairs by the records' constraints with no judge running at all, and asks the
scripted judge only about compliance ties."""

import json

import pytest
import yaml
from judge_test_server import ScriptedJudgeServer

from xwin.core.errors import ConfigError
from xwin.data.io import read_records
from xwin.data.schemas import PreferencePair
from xwin.stages.registry import run_stage

CONTEXT = [{"role": "user", "content": "Plan a trip."},
           {"role": "assistant", "content": "Where to?"},
           {"role": "user", "content": "Lisbon, three days."}]


def multiwise(id_, *texts):
    return {"id": id_, "context": CONTEXT, "responses": [{"text": t} for t in texts]}


RECORDS = [
    multiwise("clear", "quality=3 Day 1: walk.", "quality=8 Day 1: Alfama, day 2: Belem..."),
    multiwise("tie", "quality=5 one plan", "quality=5 another plan"),
    multiwise("biased", "POSITION_BIAS quality=9 plan", "quality=2 plan"),
    multiwise("garbled", "GARBLE plan", "quality=4 plan"),
    multiwise("one-distinct", "quality=7 same", "quality=7 same", "  "),
    multiwise("three", "quality=2 x", "quality=6 y", "quality=9 z"),
]


@pytest.fixture
def server():
    with ScriptedJudgeServer() as s:
        yield s


def spec_for(tmp_path, server, inputs, **config):
    """server None: no judge configured at all."""
    judge = {"judge": {"base_url": server.base_url, "model": server.model,
                       "backoff_initial_s": 0.01}} if server else {}
    spec = {"stage": "annotate", "run_id": "t", "output": "annotate/test",
            "store": {"kind": "local", "root": str(tmp_path / "store")},
            "workdir": str(tmp_path / "work"), "inputs": inputs,
            "config": {**judge, **config}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def output_store(tmp_path):
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    return open_store(StoreConfig(kind="local", root=tmp_path / "store"))


def output_pairs(tmp_path) -> list[PreferencePair]:
    out = output_store(tmp_path).fetch("annotate/test")
    return list(read_records(out / "pairs.jsonl", PreferencePair))


@pytest.fixture
def responses(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_pairwise_keeps_only_consistent_preferences(tmp_path, server, responses):
    metrics = run_stage("annotate", spec_for(tmp_path, server, {"samples": str(responses)},
                                             method="pairwise", max_responses=3))
    pairs = {p.id.rsplit("-", 1)[0]: p for p in output_pairs(tmp_path)}
    kept = sorted((p.chosen.split()[0], p.rejected.split()[0]) for p in output_pairs(tmp_path))
    # clear: 8 > 3; three: 6 > 2, 9 > 2, 9 > 6; tie, biased and garbled are dropped
    assert kept == [("quality=6", "quality=2"), ("quality=8", "quality=3"),
                    ("quality=9", "quality=2"), ("quality=9", "quality=6")]
    assert metrics["pairs"] == 4 and metrics["contexts"] == 6
    assert (metrics["ties"], metrics["inconsistent"], metrics["unparseable"]) == (1, 1, 1)
    assert metrics["skipped_contexts"] == 1  # one-distinct: a single distinct response
    clear = pairs["clear"]
    assert [m.model_dump() for m in clear.context] == CONTEXT
    assert clear.source == f"judge:{server.model}"
    assert (clear.chosen_score, clear.rejected_score) == (1.0, 0.0)
    assert clear.meta["method"] == "pairwise"
    assert clear.meta["rationale"]["chosen_as_a"].endswith("[[A]]")
    assert clear.meta["rationale"]["rejected_as_a"].endswith("[[B]]")
    # every comparison went out in both orders: 1 + 1 + 1 + 1 + 3 pairs
    assert len(server.requests) == 2 * 7 == metrics["judge/requests"]


def test_single_grading_pairs_top_and_bottom_grade(tmp_path, server, responses):
    metrics = run_stage("annotate", spec_for(tmp_path, server, {"responses": str(responses)},
                                             method="single", max_responses=3))
    pairs = {p.id.rsplit("-", 1)[0]: p for p in output_pairs(tmp_path)}
    # biased is fine here (no positions in single grading); garbled has one grade only
    assert sorted(pairs) == ["biased", "clear", "three"]
    three = pairs["three"]
    assert (three.chosen_score, three.rejected_score) == (9.0, 2.0)
    assert three.chosen.startswith("quality=9") and three.rejected.startswith("quality=2")
    assert three.meta["rationale"]["chosen"].endswith("[[9]]")
    assert metrics["ties"] == 1 and metrics["unparseable"] == 1
    assert metrics["skipped_contexts"] == 2  # one-distinct and garbled
    assert len(server.requests) == 2 + 2 + 2 + 2 + 1 + 3


def test_single_grading_all_pairs_and_a_score_gap(tmp_path, server, responses):
    metrics = run_stage("annotate", spec_for(tmp_path, server, {"responses": str(responses)},
                                             method="single", max_responses=3,
                                             single_pairing="all", min_score_gap=3.0))
    kept = sorted((p.chosen_score, p.rejected_score) for p in output_pairs(tmp_path))
    # gaps above 3: clear 8-3, biased 9-2, three 6-2 and 9-2 (9-6 is a tie at this gap)
    assert kept == [(6.0, 2.0), (8.0, 3.0), (9.0, 2.0), (9.0, 2.0)]
    assert metrics["ties"] == 2  # tie (5-5) and three's 9-6


def test_a_rerun_asks_the_judge_nothing(tmp_path, server, responses):
    spec = spec_for(tmp_path, server, {"responses": str(responses)})
    first = run_stage("annotate", spec)
    sent = len(server.requests)
    second = run_stage("annotate", spec)
    assert len(server.requests) == sent and second["judge/requests"] == 0
    assert second["pairs"] == first["pairs"]


def test_sampled_responses_from_a_model(tmp_path, server, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [
        {"role": "user", "content": f"Tell me fact number {i}."}]}) + "\n" for i in range(3)))
    metrics = run_stage("annotate", spec_for(
        tmp_path, server, {"prompts": str(prompts), "model": str(tiny_model_dir)},
        num_samples=2, engine={"backend": "hf", "dtype": "float32"},
        generation={"temperature": 1.0, "max_new_tokens": 8}))
    pairs = output_pairs(tmp_path)
    # the scripted judge prefers the longer answer: every kept pair says so
    assert metrics["contexts"] == 3 and metrics["pairs"] == len(pairs)
    assert metrics["pairs"] + metrics["ties"] == 3
    for p in pairs:
        assert len(p.chosen) > len(p.rejected)
        assert p.context[0].content.startswith("Tell me fact number")


def test_missing_inputs_are_a_config_error(tmp_path, server):
    with pytest.raises(ConfigError, match="give input `responses`"):
        run_stage("annotate", spec_for(tmp_path, server, {}))


def test_each_shard_annotates_its_own_contexts(tmp_path, server, responses):
    spec = spec_for(tmp_path, server, {"responses": str(responses)}, max_responses=3)
    odd = run_stage("annotate", spec, shard="1/2")  # tie, garbled, three
    assert odd["contexts"] == 3
    assert (odd["pairs"], odd["ties"], odd["unparseable"]) == (3, 1, 1)


def test_the_xwin_stage_command_annotates_and_fails_permanently_on_bad_input(
        tmp_path, server, responses):
    import subprocess
    import sys

    def xwin_stage(spec):
        return subprocess.run([sys.executable, "-m", "xwin.cli", "stage", "annotate", "--config",
                               str(spec)], check=False, capture_output=True, text=True, timeout=300)

    done = xwin_stage(spec_for(tmp_path, server, {"responses": str(responses)}))
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["pairs"] == len(output_pairs(tmp_path)) == 2  # clear; three (first two)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "context": [{"role": "assistant", "content": "hi"}],
                               "responses": []}) + "\n")
    failed = xwin_stage(spec_for(tmp_path, server, {"responses": str(bad)}))
    assert failed.returncode == 2  # bad data: the controller must not retry
    assert "bad.jsonl:1: context" in failed.stderr


# Method verifiable. The constraints are IFEval's; the replies are hand-written so that each
# context's verdicts are known (tests/unit/test_verifiable_pairs.py checks the same replies).
NO_COMMA = {"instruction_id": "punctuation:no_comma", "kwargs": {}}
LOWERCASE = {"instruction_id": "change_case:english_lowercase", "kwargs": {}}
JSON = {"instruction_id": "detectable_format:json_format", "kwargs": {}}
FULL = "this is my answer and i wrote it in english for you today."  # both followed
HALF = "This is my answer and I wrote it in English for you today."  # no comma only
NONE = "This is my answer, and I wrote it in English for you today."  # neither
INTRO_JSON = 'Here it is:\n{"a": 1}'  # JSON loosely only (an intro line), no comma
PROSE = "Here it is: a equals one."  # no JSON, no comma


def constrained(id_, constraints, *texts):
    return {**multiwise(id_, *texts), "constraints": constraints}


VERIFIABLE_RECORDS = [
    constrained("case", [NO_COMMA, LOWERCASE], HALF, FULL, NONE),
    constrained("json", [JSON, NO_COMMA], PROSE, INTRO_JSON),
    # both follow the one instruction: a tie, which only the judge can decide (8 > 3)
    constrained("both-ok", [NO_COMMA], "quality=3 a fine answer.", "quality=8 another one."),
    multiwise("plain", "quality=2 x", "quality=9 y"),  # no constraints: skipped
    constrained("one-distinct", [NO_COMMA], "same.", "same.", "  "),
]


@pytest.fixture
def constrained_responses(tmp_path):
    path = tmp_path / "constrained.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in VERIFIABLE_RECORDS))
    return path


def verdicts(compliance):
    return [(v["instruction_id"], v["strict"], v["loose"]) for v in compliance["instructions"]]


def test_verifiable_pairs_by_compliance_without_any_judge(tmp_path, constrained_responses):
    metrics = run_stage("annotate", spec_for(tmp_path, None, {"responses": str(constrained_responses)},
                                             method="verifiable", max_responses=3))
    pairs = output_pairs(tmp_path)
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [
        ("case-0", FULL, NONE), ("json-0", INTRO_JSON, PROSE)]
    case, json_ = pairs
    assert case.source == json_.source == "verifiable"
    assert (case.chosen_score, case.rejected_score) == (1.0, 0.0)  # instructions followed, strict
    assert (json_.chosen_score, json_.rejected_score) == (0.5, 0.5)  # decided by loose
    assert [m.model_dump() for m in case.context] == CONTEXT
    assert (case.meta["method"], case.meta["decided_by"]) == ("verifiable", "prompt_strict")
    assert json_.meta["decided_by"] == "prompt_loose"
    assert verdicts(case.meta["compliance"]["chosen"]) == [
        ("punctuation:no_comma", True, True), ("change_case:english_lowercase", True, True)]
    assert verdicts(case.meta["compliance"]["rejected"]) == [
        ("punctuation:no_comma", False, False), ("change_case:english_lowercase", False, False)]
    assert verdicts(json_.meta["compliance"]["chosen"]) == [
        ("detectable_format:json_format", False, True), ("punctuation:no_comma", True, True)]
    assert json_.meta["compliance"]["chosen"]["prompt_loose"] is True
    assert metrics == {
        "contexts": 5, "pairs": 2, "pairs_by_judge": 0, "contexts_without_constraints": 1,
        "skipped_contexts": 1, "ties": 1, "ties_judged": 0, "ties_dropped": 1, "judge_ties": 0,
        "inconsistent": 0, "unparseable": 0,
        # 8 replies checked (3 + 2 + 2 + 1); fully strict: FULL, both of both-ok, same.
        "responses_checked": 8, "prompt_strict": 4 / 8, "prompt_loose": 5 / 8,  # + INTRO_JSON
        "instruction_strict": 8 / 13, "instruction_loose": 9 / 13}
    store = output_store(tmp_path)
    assert store.manifest("annotate/test").metadata["metrics"] == metrics
    out = store.fetch("annotate/test")
    assert json.loads((out / "summary.json").read_text()) == metrics
    checks = [json.loads(line) for line in (out / "checks.jsonl").read_text().splitlines()]
    assert [(c["id"], c["response"], c["prompt_strict"]) for c in checks][:3] == [
        ("case", HALF, False), ("case", FULL, True), ("case", NONE, False)]
    assert len(checks) == 8 and (out / "judgments.jsonl").read_text() == ""
    assert not (tmp_path / "work" / "judge-cache.sqlite").exists()  # no judge was ever opened


def test_verifiable_asks_the_judge_only_about_ties(tmp_path, server, constrained_responses):
    metrics = run_stage("annotate", spec_for(tmp_path, server, {"responses": str(constrained_responses)},
                                             method="verifiable", max_responses=3))
    pairs = {p.id: p for p in output_pairs(tmp_path)}
    assert list(pairs) == ["case-0", "json-0", "both-ok-0"]
    tie = pairs["both-ok-0"]
    assert (tie.chosen, tie.rejected) == ("quality=8 another one.", "quality=3 a fine answer.")
    assert tie.source == f"verifiable+judge:{server.model}"
    assert tie.meta["decided_by"] == "judge"
    assert (tie.chosen_score, tie.rejected_score) == (1.0, 1.0)  # both fully compliant
    assert tie.meta["rationale"]["chosen_as_a"].endswith("[[A]]")
    assert verdicts(tie.meta["compliance"]["rejected"]) == [("punctuation:no_comma", True, True)]
    assert pairs["case-0"].source == "verifiable"
    assert (metrics["pairs"], metrics["pairs_by_judge"], metrics["ties_judged"]) == (3, 1, 1)
    assert metrics["ties_dropped"] == 0
    assert len(server.requests) == 2 == metrics["judge/requests"]  # the tie, in both orders


def test_verifiable_ties_the_judge_leaves_undecided_are_dropped(tmp_path, server):
    path = tmp_path / "ties.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        constrained("even", [NO_COMMA], "quality=5 one.", "quality=5 two."),
        constrained("biased", [NO_COMMA], "POSITION_BIAS quality=9 one.", "quality=2 two."),
        constrained("clear", [NO_COMMA], "quality=1 one.", "quality=7 two.")]))
    metrics = run_stage("annotate", spec_for(tmp_path, server, {"responses": str(path)},
                                             method="verifiable"))
    assert [p.id for p in output_pairs(tmp_path)] == ["clear-0"]
    assert (metrics["ties"], metrics["ties_judged"], metrics["ties_dropped"]) == (3, 3, 2)
    assert (metrics["judge_ties"], metrics["inconsistent"]) == (1, 1)


def test_verifiable_ties_drop_never_asks_the_configured_judge(tmp_path, server,
                                                               constrained_responses):
    metrics = run_stage("annotate", spec_for(tmp_path, server, {"responses": str(constrained_responses)},
                                             method="verifiable", verifiable_ties="drop",
                                             verifiable_pairing="all", max_responses=3))
    # case: all three pairs differ (FULL > HALF > NONE); json: one; both-ok: the dropped tie
    assert sorted((p.id, p.meta["decided_by"]) for p in output_pairs(tmp_path)) == [
        ("case-0", "prompt_strict"), ("case-1", "instruction_strict"),
        ("case-2", "prompt_strict"), ("json-0", "prompt_loose")]
    assert (metrics["pairs"], metrics["ties_dropped"], metrics["ties_judged"]) == (4, 1, 0)
    assert server.requests == [] and "judge/requests" not in metrics


def test_verifiable_config_errors(tmp_path, constrained_responses):
    with pytest.raises(ConfigError, match="verifiable_ties: judge needs a judge"):
        run_stage("annotate", spec_for(tmp_path, None, {"responses": str(constrained_responses)},
                                       method="verifiable", verifiable_ties="judge"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(constrained("x", [{"instruction_id": "no:such", "kwargs": {}}],
                                          "a", "b")) + "\n")
    with pytest.raises(ConfigError, match="record 'x': a constraint cannot be checked"):
        run_stage("annotate", spec_for(tmp_path, None, {"responses": str(bad)},
                                       method="verifiable"))


def test_verifiable_on_responses_sampled_from_a_model(tmp_path, tiny_model_dir):
    letters = {"instruction_id": "keywords:letter_frequency",
               "kwargs": {"letter": "e", "let_frequency": 4, "let_relation": "at least"}}
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({
        "id": f"p{i}", "constraints": [NO_COMMA, letters],
        "messages": [{"role": "user", "content": f"Tell me fact number {i}, no commas."}]}) + "\n"
        for i in range(3)))
    metrics = run_stage("annotate", spec_for(
        tmp_path, None, {"prompts": str(prompts), "model": str(tiny_model_dir)},
        method="verifiable", num_samples=2, engine={"backend": "hf", "dtype": "float32"},
        generation={"temperature": 1.0, "max_new_tokens": 8}))
    # the prompts' constraints travel with the samples: every context is checked, no judge runs
    assert metrics["contexts"] == 3 and metrics["contexts_without_constraints"] == 0
    checks = [json.loads(line) for line in (output_store(tmp_path).fetch("annotate/test")
                                             / "checks.jsonl").read_text().splitlines()]
    assert metrics["responses_checked"] == len(checks) >= 3
    assert {c["id"] for c in checks} == {"p0", "p1", "p2"}
    pairs = output_pairs(tmp_path)
    assert metrics["pairs"] == len(pairs)
    assert metrics["pairs"] + metrics["ties_dropped"] + metrics["skipped_contexts"] == 3
    criteria = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
    for p in pairs:  # the chosen sample complies better, by the criterion named
        chosen, rejected = (p.meta["compliance"][k] for k in ("chosen", "rejected"))
        assert [chosen[c] for c in criteria] > [rejected[c] for c in criteria]
        assert chosen[p.meta["decided_by"]] > rejected[p.meta["decided_by"]]
    assert not (tmp_path / "work" / "judge-cache.sqlite").exists()


def test_the_xwin_stage_command_annotates_verifiably_with_no_judge(tmp_path,
                                                                   constrained_responses):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "xwin.cli", "stage", "annotate", "--config",
         str(spec_for(tmp_path, None, {"responses": str(constrained_responses)},
                      method="verifiable", max_responses=3))],
        check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]
    assert (metrics["pairs"], metrics["ties_dropped"]) == (2, 1)
    assert [p.id for p in output_pairs(tmp_path)] == ["case-0", "json-0"]
