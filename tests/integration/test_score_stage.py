"""The score stage with a tiny real reward model (the tiny Llama's body + a value head): every
response gets the reward the model gives it alone, padding never changes a score, sharded
inputs are read in order, and score -> select runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from xwin_set_helpers import PROMPTS, fetch, write_jsonl, write_spec

from xwin.data.io import read_records
from xwin.data.schemas import Conversation, MultiwiseRecord, PreferencePair
from xwin.data.templating import tokenize_prompt_and_reply
from xwin.models.loading import load_tokenizer
from xwin.models.reward import RewardModel, load_reward_model
from xwin.models.scoring import length_sorted_batches, score_sequences
from xwin.stages.registry import run_stage
from xwin.stages.score import PARTIAL_FILE

REPLIES = [
    "Paris.",
    "The capital of France is Paris, a city on the Seine known for the Eiffel Tower.",
    "I think it is Lyon.",
    "Paris",
]


@pytest.fixture(scope="module")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-rm")
    RewardModel.from_language_model(tiny_model_dir).save(out, load_tokenizer(tiny_model_dir))
    return out


def samples_rows(prompts=PROMPTS) -> list[dict]:
    return [
        {"id": p["id"], "context": p["messages"],
         "responses": [{"text": f"{reply} ({i})", "finish_reason": "stop", "num_tokens": 3}
                       for reply in REPLIES[: 2 + i]]}
        for i, p in enumerate(prompts)
    ]


def alone(model, tokenizer, context, reply) -> float:
    ids = tokenize_prompt_and_reply(tokenizer, context, reply, 4096).input_ids
    with torch.no_grad():
        return float(model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0])


def test_length_sorted_batches_group_longest_first():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([3, 9, 1], 2, sort=False) == [[0, 1], [2]]


def test_padding_does_not_change_a_score(tiny_rm_dir):
    model = load_reward_model(tiny_rm_dir, "float32")
    tokenizer = load_tokenizer(tiny_rm_dir)
    context = PROMPTS[1]["messages"]
    sequences = [tokenize_prompt_and_reply(tokenizer, context, r, 4096).input_ids for r in REPLIES]
    assert len({len(s) for s in sequences}) == len(sequences)  # really different lengths
    singles = [alone(model, tokenizer, context, r) for r in REPLIES]
    # SmolLM2's pad id is its end-of-turn token: padding with it must not matter either.
    for pad_id in (0, tokenizer.pad_token_id):
        for sort in (True, False):
            batched = score_sequences(model, sequences, batch_size=4, pad_id=pad_id,
                                      sort_by_length=sort, progress=False)
            assert batched == pytest.approx(singles, abs=1e-5)
    assert len({round(s, 6) for s in singles}) == len(singles)  # a head that discriminates


def test_score_stage_scores_every_response_as_the_model_does_alone(tmp_path, tiny_rm_dir):
    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    spec = write_spec(tmp_path, "score", {"reward_model": str(tiny_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "batch_size": 3})
    metrics = run_stage("score", spec)
    records = list(read_records(fetch(tmp_path, "runs/test/score") / "scored.jsonl", MultiwiseRecord))
    model, tokenizer = load_reward_model(tiny_rm_dir, "float32"), load_tokenizer(tiny_rm_dir)
    assert [r.id for r in records] == [p["id"] for p in PROMPTS]
    for record, row in zip(records, samples_rows()):
        assert [r.text for r in record.responses] == [r["text"] for r in row["responses"]]
        for response in record.responses:
            assert response.score == pytest.approx(
                alone(model, tokenizer, record.context, response.text), abs=1e-5)
            assert response.finish_reason == "stop" and response.num_tokens == 3
    assert metrics["responses_scored"] == 2 + 3 + 4 and metrics["responses_dropped_too_long"] == 0


def test_a_token_budget_scores_as_a_row_count_does(tmp_path, tiny_rm_dir):
    """Batches capped by padded tokens (160: these 32-77-token sequences go two or three a
    batch) give the rewards of one batch of all nine, and the metrics name the backend."""
    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    budget = write_spec(tmp_path / "a", "score", {"reward_model": str(tiny_rm_dir), "samples": str(samples)},
                        {"dtype": "float32", "max_batch_tokens": 160})
    rows = write_spec(tmp_path / "b", "score", {"reward_model": str(tiny_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "batch_size": 64})
    metrics = run_stage("score", budget)
    assert metrics["backend"] == "hf" and metrics["backend_reason"] == "backend: hf"
    assert metrics["responses_scored"] == 9 and metrics["responses_dropped_too_long"] == 0
    run_stage("score", rows)
    small, big = ([resp.score for r in read_records(fetch(root, "runs/test/score") / "scored.jsonl", MultiwiseRecord)
                   for resp in r.responses] for root in (tmp_path / "a", tmp_path / "b"))
    assert small == pytest.approx(big, abs=1e-5)


@pytest.fixture(scope="module")
def first_format_rm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A reward model folder of the first format (an AutoModel body, the head in its own file):
    no sequence classifier, so vLLM's pooling runner cannot load it."""
    from safetensors.torch import save_file

    from xwin.models.reward import FORMAT, LEGACY_VALUE_HEAD, REWARD_CONFIG

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("first-format-rm")
    model = RewardModel.from_language_model(tiny_model_dir)
    model.body.save_pretrained(out, safe_serialization=True)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.value_head.state_dict().items()}, str(out / LEGACY_VALUE_HEAD))
    (out / REWARD_CONFIG).write_text(json.dumps({"format": FORMAT, "version": 1, "value_head": LEGACY_VALUE_HEAD}))
    return out


def test_backend_auto_falls_back_to_hf_for_a_folder_vllm_cannot_pool_and_says_why(tmp_path, first_format_rm_dir):
    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    spec = write_spec(tmp_path, "score", {"reward_model": str(first_format_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "backend": "auto"})
    metrics = run_stage("score", spec)
    assert metrics["backend"] == "hf"
    assert metrics["backend_reason"].startswith("backend auto fell back to hf: architectures ['LlamaModel']")
    stats = json.loads((fetch(tmp_path, "runs/test/score") / "stats.json").read_text())
    assert stats["backend"] == "hf" and stats["responses_scored"] == 9
    model, tokenizer = load_reward_model(first_format_rm_dir, "float32"), load_tokenizer(first_format_rm_dir)
    [record] = [r for r in read_records(fetch(tmp_path, "runs/test/score") / "scored.jsonl", MultiwiseRecord)
                if r.id == "capital"]
    assert [x.score for x in record.responses] == pytest.approx(
        [alone(model, tokenizer, record.context, x.text) for x in record.responses], abs=1e-5)


def test_backend_vllm_for_a_folder_it_cannot_pool_is_a_user_error(tmp_path, first_format_rm_dir):
    from xwin.core.errors import UserError

    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    spec = write_spec(tmp_path, "score", {"reward_model": str(first_format_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "backend": "vllm"})
    with pytest.raises(UserError, match="backend vllm, but architectures \\['LlamaModel'\\]"):
        run_stage("score", spec)


def test_responses_that_cannot_fit_are_dropped_and_counted(tmp_path, tiny_rm_dir):
    rows = samples_rows(PROMPTS[:1])
    rows[0]["responses"].append({"text": "word " * 300})
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    spec = write_spec(tmp_path, "score", {"reward_model": str(tiny_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "max_length": 128})
    metrics = run_stage("score", spec)
    [record] = read_records(fetch(tmp_path, "runs/test/score") / "scored.jsonl", MultiwiseRecord)
    assert len(record.responses) == 2 and metrics["responses_dropped_too_long"] == 1


def test_a_killed_attempt_resumes_after_its_last_flushed_chunk(tmp_path, tiny_rm_dir):
    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    spec = write_spec(tmp_path, "score", {"reward_model": str(tiny_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "batch_size": 2, "chunk_contexts": 1})
    first = run_stage("score", spec)
    reference = (fetch(tmp_path, "runs/test/score") / "scored.jsonl").read_text()
    # As a kill -9 after the first chunk leaves it: one flushed record, then a torn line.
    partial = tmp_path / "work" / "test" / "score" / PARTIAL_FILE
    lines = partial.read_text().splitlines(keepends=True)
    assert len(lines) == len(PROMPTS)  # one flush per chunk of one context
    partial.write_text(lines[0] + lines[1][:25])

    again = run_stage("score", spec)
    assert first["contexts_resumed"] == 0 and again["contexts_resumed"] == 1
    assert (fetch(tmp_path, "runs/test/score") / "scored.jsonl").read_text() == reference
    assert again["responses_scored"] == first["responses_scored"] == 2 + 3 + 4

    # different work (another config) never resumes from this partial file
    other = write_spec(tmp_path, "score", {"reward_model": str(tiny_rm_dir), "samples": str(samples)},
                       {"dtype": "float32", "batch_size": 3, "chunk_contexts": 1})
    assert run_stage("score", other)["contexts_resumed"] == 0


def test_sharded_samples_to_sharded_scores_to_select(tmp_path, tiny_rm_dir):
    """sample parts (committed by two shards) -> score in two shards -> select reads all parts."""
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    store = open_store(StoreConfig(kind="local", root=tmp_path / "store"))
    rows = samples_rows()
    for i, part_rows in enumerate([rows[0::2], rows[1::2]]):
        write_jsonl(tmp_path / f"part{i}" / "samples.jsonl", part_rows)
        store.commit(f"runs/test/sample/part-{i:05d}-of-00002", tmp_path / f"part{i}", producer="sample")
    spec = write_spec(tmp_path, "score", {"reward_model": str(tiny_rm_dir), "samples": "runs/test/sample"},
                      {"dtype": "float32"}, shards=2)
    run_stage("score", spec, shard="0/2")
    run_stage("score", spec, shard="1/2")
    # parts in order: capital, with-system | multi-turn -> score shard 0 takes items 0 and 2
    part0 = fetch(tmp_path, "runs/test/score/part-00000-of-00002") / "scored.jsonl"
    assert [r.id for r in read_records(part0, MultiwiseRecord)] == ["capital", "multi-turn"]

    select_spec = write_spec(tmp_path, "select", {"scored": "runs/test/score"}, {})
    metrics = run_stage("select", select_spec)
    out = fetch(tmp_path, "runs/test/select")
    scored = {r.id: r for part in (0, 1) for r in read_records(
        fetch(tmp_path, f"runs/test/score/part-{part:05d}-of-00002") / "scored.jsonl", MultiwiseRecord)}
    assert metrics["contexts"] == 3
    for conversation in read_records(out / "rs.jsonl", Conversation):
        best = max(scored[conversation.id].responses, key=lambda r: r.score)
        assert conversation.messages[-1].content == best.text
    for pair in read_records(out / "dpo.jsonl", PreferencePair):
        responses = scored[pair.id.split(":")[0]].responses
        assert pair.chosen_score == max(r.score for r in responses)
        assert pair.rejected_score == min(r.score for r in responses)
    assert json.loads((out / "stats.json").read_text())["dpo"]["pairs"] == 3


@pytest.fixture(scope="module")
def diverged_rm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A reward model whose value head holds NaN, as a diverged training run leaves it."""
    out = tmp_path_factory.mktemp("diverged-rm")
    model = RewardModel.from_language_model(tiny_model_dir)
    with torch.no_grad():
        model.value_head.weight.fill_(float("nan"))
    model.save(out, load_tokenizer(tiny_model_dir))
    return out


def test_a_diverged_reward_model_fails_the_stage_naming_the_count_and_first_record(tmp_path, diverged_rm_dir):
    from xwin.core.errors import UserError
    from xwin.data.io import read_records as read

    samples = write_jsonl(tmp_path / "samples.jsonl", samples_rows())
    spec = write_spec(tmp_path, "score", {"reward_model": str(diverged_rm_dir), "samples": str(samples)},
                      {"dtype": "float32", "batch_size": 2, "chunk_contexts": 2})
    with pytest.raises(UserError, match=r"5 of 5 scores in this chunk of 2 contexts are not finite "
                                        r"\(NaN/Inf\); first: record 'capital', response 0 scored nan"):
        run_stage("score", spec)
    from xwin.artifacts.config import StoreConfig
    from xwin.artifacts.factory import open_store

    assert not open_store(StoreConfig(kind="local", root=tmp_path / "store")).exists("runs/test/score")
    partial = tmp_path / "work" / "test" / "score" / PARTIAL_FILE
    assert not partial.exists() or "null" not in partial.read_text()
    assert not partial.exists() or list(read(partial, MultiwiseRecord)) == []


def test_score_sequences_names_every_non_finite_reward_in_input_order():
    from xwin.models.scoring import NonFiniteRewards

    class Diverges(torch.nn.Module):
        """Reward = first token id, except token 7 (inf) and 9 (nan): a head gone bad on some inputs."""

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            first = input_ids[:, 0].float()
            return torch.where(first == 7, torch.inf, torch.where(first == 9, torch.nan, first))

    sequences = [[1, 2], [7], [3, 3, 3], [9, 1], [4]]
    with pytest.raises(NonFiniteRewards) as info:
        score_sequences(Diverges(), sequences, batch_size=2, progress=False)
    assert (info.value.indices, info.value.total) == ([1, 3], 5)
    assert info.value.values[0] == float("inf")
    assert score_sequences(Diverges(), [[1], [3, 3]], batch_size=2, progress=False) == [1.0, 3.0]
