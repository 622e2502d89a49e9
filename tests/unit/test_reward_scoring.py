"""Reward-scoring batches capped by tokens, and which backend a reward model folder gets."""

from __future__ import annotations

import json

import pytest

from xwin.core.errors import UserError
from xwin.models.scorer_factory import choose_backend, vllm_unsupported_reason
from xwin.models.scoring import length_sorted_batches


def padded_tokens(batch, lengths) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def test_token_budget_batches_longest_first_with_hand_computed_groups():
    lengths = [10, 3, 7, 7, 2]
    # sorted 0(10) 2(7) 3(7) 1(3) 4(2): [0, 2] pads to 2x10 = 20; adding 3 would be 30;
    # [3, 1] is 2x7 = 14, adding 4 would be 21
    assert length_sorted_batches(lengths, 8, max_tokens=20) == [[0, 2], [3, 1], [4]]
    assert length_sorted_batches(lengths, 8, max_tokens=1000) == [[0, 2, 3, 1, 4]]
    assert length_sorted_batches(lengths, 2, max_tokens=1000) == [[0, 2], [3, 1], [4]]  # rows cap too


def test_token_budget_in_input_order_counts_the_longest_so_far():
    # [3, 10] pads to 2x10 = 20; a third row would make it 30
    assert length_sorted_batches([3, 10, 2], 8, sort=False, max_tokens=20) == [[0, 1], [2]]


def test_a_sequence_over_the_budget_is_a_batch_of_its_own_and_none_is_lost():
    lengths = [50, 5, 5, 5, 40, 1]
    batches = length_sorted_batches(lengths, 64, max_tokens=20)
    assert batches[0] == [0] and batches[1] == [4]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(padded_tokens(b, lengths) <= 20 for b in batches[2:])


SUPPORTED = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen2ForRewardModel"}


@pytest.mark.parametrize("architectures, supported, reason", [
    (["LlamaForSequenceClassification"], SUPPORTED, None),  # vLLM converts the causal LM
    (["Qwen2ForRewardModel"], SUPPORTED, None),
    (["LlamaForSequenceClassification"], None, "vllm is not installed"),
    (["LlamaModel"], SUPPORTED, "no sequence classifier"),  # the rm stage's first format
    (["FalconForSequenceClassification"], SUPPORTED, "vLLM does not support FalconForSequenceClassification"),
])
def test_vllm_scores_only_classifiers_it_runs(architectures, supported, reason):
    got = vllm_unsupported_reason(architectures, supported)
    assert got is None if reason is None else reason in got


def folder(tmp_path, architectures):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": architectures}))
    return tmp_path


def test_auto_falls_back_to_hf_and_says_why(tmp_path):
    backend, why = choose_backend("auto", folder(tmp_path, ["LlamaModel"]))
    assert backend == "hf" and why.startswith("backend auto fell back to hf:") and "LlamaModel" in why


def test_vllm_asked_for_a_folder_it_cannot_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="backend vllm, but architectures"):
        choose_backend("vllm", folder(tmp_path, ["LlamaModel"]))
    assert choose_backend("hf", folder(tmp_path, ["LlamaModel"])) == ("hf", "backend: hf")
