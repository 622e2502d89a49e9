"""`xwin stage annotate`: Xwin-Pair-style pairs from a scripted judge over HTTP. Responses carry
`quality=N` markers the judge rewards, or markers that make it tie, follow positions or
answer without a verdict, so every kept and dropped pair is known in advance."""

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
    spec = {"stage": "annotate", "run_id": "t", "output": "annotate/test",
            "store": {"kind": "local", "root": str(tmp_path / "store")},
            "workdir": str(tmp_path / "work"), "inputs": inputs,
            "config": {"judge": {"base_url": server.base_url, "model": server.model,
                                 "backoff_initial_s": 0.01}, **config}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def output_pairs(tmp_path) -> list[PreferencePair]:
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    out = open_store(StoreConfig(kind="local", root=tmp_path / "store")).fetch("annotate/test")
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
