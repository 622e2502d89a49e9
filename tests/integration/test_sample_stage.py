"""The sample stage end to end: prompts + model folder in, a committed multiwise set out.

Fast tests run the HF backend on the tiny random Llama; the slow ones run the real
SmolLM2-135M-Instruct through vLLM (one engine start, in a `python -m xwin.cli` subprocess as
in a Job) and through HF generate, and check the responses are distinct, non-empty and well
formed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from xwin_set_helpers import PROMPTS, fetch, manifest_metrics, write_jsonl, write_spec

from xwin.cli import stage_main
from xwin.core.errors import EXIT_USER_ERROR
from xwin.data.io import read_records
from xwin.data.schemas import MultiwiseRecord
from xwin.sampling.distinct import DistinctSamples, add_distinct
from xwin.sampling.generation import Generation
from xwin.stages.registry import run_stage

TINY = {"backend": "hf", "dtype": "float32", "temperature": 1.0, "max_new_tokens": 6, "seed": 3}


def sample_spec(tmp_path: Path, model: Path, prompts: list[dict], shards: int = 1, **config):
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    return write_spec(tmp_path, "sample", {"model": str(model), "prompts": str(prompts_file)},
                      {**TINY, **config}, shards=shards)


def committed_records(tmp_path: Path, key: str = "runs/test/sample") -> list[MultiwiseRecord]:
    return list(read_records(fetch(tmp_path, key) / "samples.jsonl", MultiwiseRecord))


def assert_well_formed(records: list[MultiwiseRecord], prompts: list[dict], n: int, max_new: int):
    assert [r.id for r in records] == [p["id"] for p in prompts]
    for record, prompt in zip(records, prompts):
        assert [m.model_dump() for m in record.context] == prompt["messages"]
        texts = [r.text for r in record.responses]
        assert len(texts) == n, record.meta
        assert len(set(texts)) == n, f"{record.id}: duplicate responses {texts}"
        assert all(t.strip() for t in texts), f"{record.id}: empty response"
        for r in record.responses:
            assert r.score is None
            assert r.finish_reason in ("stop", "length")
            assert 1 <= r.num_tokens <= max_new
            if r.finish_reason == "length":
                assert r.num_tokens == max_new
        assert record.meta["sampling"]["prompt_tokens"] > 0


def test_add_distinct_drops_repeats_and_empty_answers():
    samples, seen = DistinctSamples(), set()

    def gen(text):
        return Generation(text, "stop", 2, 5)

    add_distinct(samples, seen, [gen("a"), gen("a"), gen("  "), gen("b"), gen("c")], n=2)
    assert [g.text for g in samples.generations] == ["a", "b"]
    assert (samples.duplicates, samples.empty) == (1, 1)


def test_generation_api_counts_budgets_and_limits(tiny_model_dir):
    """The API the eval stage uses: per-context counts, greedy repeats, the context limit."""
    from xwin.core.errors import UserError
    from xwin.sampling import EngineOptions, GenerationParams, open_engine

    contexts = [p["messages"] for p in PROMPTS[:2]]
    with open_engine(tiny_model_dir, EngineOptions(backend="hf", dtype="float32")) as engine:
        out = engine.generate(contexts, n=[2, 0], params=GenerationParams(max_new_tokens=5))
        assert [len(g) for g in out] == [2, 0]
        assert all(g.finish_reason in ("stop", "length") and 1 <= g.num_tokens <= 5 for g in out[0])
        assert out[0][0].prompt_tokens == len(engine.prompt_token_ids(contexts[0]))
        greedy = engine.generate(contexts[:1], n=3, params=GenerationParams(temperature=0, max_new_tokens=4))
        assert len(greedy[0]) == 3 and len({g.text for g in greedy[0]}) == 1
        # A response never runs past max_model_len: 2 tokens of room give at most 2 tokens.
        prompt = engine.prompt_token_ids(contexts[0])
        engine.max_model_len = len(prompt) + 2
        [[capped]] = engine.generate_from_ids([prompt], 1, GenerationParams(max_new_tokens=50))
        assert capped.num_tokens <= 2
        engine.max_model_len = len(prompt)
        with pytest.raises(UserError, match="prompt 0: .* no room"):
            engine.generate_from_ids([prompt], 1)


def test_hf_backend_gives_n_distinct_responses_per_prompt(tmp_path, tiny_model_dir):
    spec = sample_spec(tmp_path, tiny_model_dir, PROMPTS, responses_per_prompt=3)
    metrics = run_stage("sample", spec)
    assert_well_formed(committed_records(tmp_path), PROMPTS, n=3, max_new=6)
    assert metrics["prompts"] == 3 and metrics["responses"] == 9
    assert metrics["prompts_short"] == 0 and metrics["prompts_generated"] == 3
    assert manifest_metrics(tmp_path, "runs/test/sample")["responses"] == 9


def test_rerun_after_a_crash_continues_after_the_last_flushed_chunk(tmp_path, tiny_model_dir):
    prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Count to {i}."}]}
               for i in range(5)]
    spec = sample_spec(tmp_path, tiny_model_dir, prompts, responses_per_prompt=2, chunk_prompts=2)
    run_stage("sample", spec)
    first = committed_records(tmp_path)
    # What a crash during chunk 2 leaves: chunk 1 (2 prompts) flushed, then a torn line.
    partial = tmp_path / "work" / "test" / "sample" / "samples.partial.jsonl"
    lines = partial.read_text().splitlines(keepends=True)
    assert len(lines) == 5
    partial.write_text("".join(lines[:2]) + lines[2][:40])

    metrics = run_stage("sample", spec)
    assert metrics["prompts_resumed"] == 2 and metrics["prompts_generated"] == 3
    again = committed_records(tmp_path)
    assert [r.id for r in again] == [p["id"] for p in prompts]
    assert again[:2] == first[:2]  # the flushed chunk is reused, not regenerated
    assert len(partial.read_text().splitlines()) == 5  # the torn line was cut, not glued onto


def test_a_different_config_does_not_reuse_flushed_work(tmp_path, tiny_model_dir):
    run_stage("sample", sample_spec(tmp_path, tiny_model_dir, PROMPTS, responses_per_prompt=2))
    metrics = run_stage("sample", sample_spec(tmp_path, tiny_model_dir, PROMPTS, responses_per_prompt=2, top_p=0.9))
    assert metrics["prompts_resumed"] == 0 and metrics["prompts_generated"] == 3


def test_a_model_that_keeps_answering_blank_falls_short_with_the_reason(tmp_path, tiny_model_dir):
    # The tiny random model's most likely token is a newline; top_p this small keeps only it, so
    # every sample is whitespace: dropped as empty, asked again, max_rounds times.
    spec = sample_spec(tmp_path, tiny_model_dir, PROMPTS[:2], responses_per_prompt=3, top_p=1e-9, max_rounds=3)
    metrics = run_stage("sample", spec)
    for record in committed_records(tmp_path):
        assert record.responses == []
        sampling = record.meta["sampling"]
        assert (sampling["rounds"], sampling["empty"], sampling["duplicates"]) == (3, 9, 0)
        assert sampling["short_reason"] == "empty"
    assert metrics["prompts_short"] == 2 and metrics["prompts_short_empty"] == 2


def test_greedy_decoding_gives_one_response_and_says_why(tmp_path, tiny_model_dir):
    metrics = run_stage("sample", sample_spec(tmp_path, tiny_model_dir, PROMPTS[:1], responses_per_prompt=4,
                                              temperature=0.0))
    [record] = committed_records(tmp_path)
    # One greedy answer at most (the tiny model's is blank, so none is kept).
    assert len(record.responses) <= 1 and record.meta["sampling"]["short_reason"] == "greedy"
    assert record.meta["sampling"]["rounds"] == 1
    assert metrics["prompts_short_greedy"] == 1


def test_shards_take_strided_slices_and_commit_their_own_part(tmp_path, tiny_model_dir):
    spec = sample_spec(tmp_path, tiny_model_dir, PROMPTS, shards=2, responses_per_prompt=2)
    run_stage("sample", spec, shard="0/2")
    run_stage("sample", spec, shard="1/2")
    part0 = committed_records(tmp_path, "runs/test/sample/part-00000-of-00002")
    part1 = committed_records(tmp_path, "runs/test/sample/part-00001-of-00002")
    assert [r.id for r in part0] == ["capital", "with-system"]
    assert [r.id for r in part1] == ["multi-turn"]


def test_prompts_too_long_for_the_context_are_skipped_and_counted(tmp_path, tiny_model_dir):
    long = {"id": "long", "messages": [{"role": "user", "content": "word " * 200}]}
    spec = sample_spec(tmp_path, tiny_model_dir, [PROMPTS[0], long], responses_per_prompt=2, max_model_len=96)
    metrics = run_stage("sample", spec)
    assert [r.id for r in committed_records(tmp_path)] == ["capital"]
    assert metrics["prompts_too_long"] == 1


def test_bad_prompts_fail_permanently_naming_file_line_and_field(tmp_path, tiny_model_dir, capsys):
    bad = [PROMPTS[0], {"id": "x", "messages": [{"role": "assistant", "content": "hi"}]}]
    spec = sample_spec(tmp_path, tiny_model_dir, bad, responses_per_prompt=2)
    assert stage_main("sample", spec) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "prompts.jsonl:2" in err and "messages" in err


def test_duplicate_prompt_ids_are_refused(tmp_path, tiny_model_dir, capsys):
    spec = sample_spec(tmp_path, tiny_model_dir, [PROMPTS[0], PROMPTS[0]], responses_per_prompt=2)
    assert stage_main("sample", spec) == EXIT_USER_ERROR
    assert "id 'capital' repeats prompt 1" in capsys.readouterr().err


SMOLLM2 = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 24, "responses_per_prompt": 4, "seed": 1,
           "dtype": "auto", "max_model_len": 1024}


@pytest.mark.slow
def test_vllm_backend_on_smollm2_through_the_stage_command(tmp_path, smollm2_dir):
    spec = sample_spec(tmp_path, smollm2_dir, PROMPTS, **SMOLLM2, backend="vllm",
                       gpu_memory_utilization=0.3)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "xwin.cli", "stage", "sample", "--config", str(spec)],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["responses"] == 12
    assert_well_formed(committed_records(tmp_path), PROMPTS, n=4, max_new=24)


@pytest.mark.slow
def test_hf_backend_on_smollm2(tmp_path, smollm2_dir):
    spec = sample_spec(tmp_path, smollm2_dir, PROMPTS, **SMOLLM2, backend="hf")
    run_stage("sample", spec)
    records = committed_records(tmp_path)
    assert_well_formed(records, PROMPTS, n=4, max_new=24)
    # The real model answers rather than babbling: most responses end on their own.
    finished = [r for rec in records for r in rec.responses if r.finish_reason == "stop"]
    assert len(finished) >= 4


@pytest.mark.slow
def test_a_model_that_keeps_repeating_itself_falls_short_with_the_reason(tmp_path, smollm2_dir):
    # top_p this small keeps only the most likely token: sampling that behaves greedily, so
    # SmolLM2 gives the same answer every time.
    spec = sample_spec(tmp_path, smollm2_dir, PROMPTS[:1], backend="hf", responses_per_prompt=3, top_p=1e-9,
                       max_rounds=2, max_new_tokens=12)
    metrics = run_stage("sample", spec)
    [record] = committed_records(tmp_path)
    assert [r.text for r in record.responses] == ["The capital of France is Paris."]
    sampling = record.meta["sampling"]
    assert (sampling["rounds"], sampling["duplicates"], sampling["empty"]) == (2, 2 + 2, 0)
    assert sampling["short_reason"] == "repeats" and metrics["prompts_short_repeats"] == 1
