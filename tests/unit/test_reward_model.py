"""The reward model: where the reward is read, that padding never changes it, that what the rm
stage saves is a standard sequence classifier transformers loads to the same numbers, and that
folders of the first format (body + value_head.safetensors) still load and convert."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from xwin.data.dataset import PromptReplyCollator, pad_right, pad_token_id
from xwin.data.templating import end_of_turn_ids, tokenize_prompt_and_reply
from xwin.models.loading import load_tokenizer
from xwin.models.reward import (
    FORMAT,
    LEGACY_VALUE_HEAD,
    REWARD_CONFIG,
    RewardModel,
    last_token_index,
    load_reward_model,
    reward_pad_token,
)

SHORT = ([{"role": "user", "content": "Say the word apple."}], "apple")
LONG = (
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Pear."},
        {"role": "user", "content": "Now name a long list of rivers, one per line, please."},
    ],
    "Nile\nAmazon\nYangtze\nMississippi\nDanube\nRhine\nVolga",
)


def reward_model(tiny_model_dir) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_language_model(tiny_model_dir).eval()


def test_last_token_index_with_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(right).tolist() == (right.sum(-1) - 1).tolist()
    left = torch.tensor([[0, 0, 1, 1, 1]])
    assert last_token_index(left).tolist() == [4]


def test_padding_does_not_change_a_reward(tiny_model_dir, tokenizer):
    model = reward_model(tiny_model_dir)
    alone = model.score(tokenizer, [SHORT[0]], [SHORT[1]], batch_size=1)[0]
    with_longer = model.score(tokenizer, [SHORT[0], LONG[0]], [SHORT[1], LONG[1]], batch_size=2)
    assert abs(with_longer[0] - alone) < 1e-5

    # the same through forward with an explicit right-padded batch; the short row is padded with
    # the pad id, which is also its own last (end-of-turn) token: only the mask may decide
    collate = PromptReplyCollator(pad_token_id(tokenizer))
    samples = [tokenize_prompt_and_reply(tokenizer, c, r, 256) for c, r in (SHORT, LONG)]
    batch = collate(samples)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
    with torch.no_grad():
        batched = model(batch["input_ids"], batch["attention_mask"])
        single = model(batch["input_ids"][:1, : len(samples[0])], batch["attention_mask"][:1, : len(samples[0])])
    assert abs(batched[0].item() - single[0].item()) < 1e-5
    assert abs(batched[0].item() - batched[1].item()) > 1e-6  # different inputs, different rewards


def test_reward_is_read_at_the_replys_end_of_turn_token(tiny_model_dir, tokenizer):
    model = reward_model(tiny_model_dir)
    sample = tokenize_prompt_and_reply(tokenizer, SHORT[0], SHORT[1], 256)
    assert sample.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = torch.tensor([sample.input_ids])
    with torch.no_grad():
        hidden = model.body(input_ids=ids).last_hidden_state[0, -1]
        expected = model.value_head(hidden).item()
        got = model(ids, torch.ones_like(ids)).item()
    assert abs(got - expected) < 1e-6


PAIRS = ([SHORT[0], LONG[0]], [SHORT[1], LONG[1]])


def transformers_rewards(folder, contexts, replies) -> list[float]:
    """Rewards as transformers alone computes them from a folder: its own classifier and
    tokenizer, a right-padded batch with the folder's pad token, no xwin code in the forward."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences = [tokenize_prompt_and_reply(tokenizer, c, r, 256).input_ids for c, r in zip(contexts, replies)]
    input_ids = pad_right(sequences, tokenizer.pad_token_id)
    attention_mask = pad_right([[1] * len(s) for s in sequences], 0)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).tolist()


def save_first_format(model: RewardModel, tokenizer, folder) -> None:
    """A folder as the rm stage wrote it before the standard format: the body, the tokenizer,
    the value head (weight and bias) in its own file, reward_config.json version 1."""
    model.body.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    head = {k: v.contiguous() for k, v in model.value_head.state_dict().items()}
    save_file(head, str(folder / LEGACY_VALUE_HEAD))
    (folder / REWARD_CONFIG).write_text(json.dumps({"format": FORMAT, "version": 1, "value_head": LEGACY_VALUE_HEAD,
                                                    "hidden_size": model.config.hidden_size, "max_length": 64}))


def first_format_model(tiny_model_dir, bias: float) -> RewardModel:
    model = reward_model(tiny_model_dir)
    head = torch.nn.Linear(model.config.hidden_size, 1, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.value_head.weight)
        head.bias.fill_(bias)
    return RewardModel(model.body, head).eval()


def max_gap(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def test_saved_reward_model_is_a_standard_sequence_classifier(tiny_model_dir, tokenizer, tmp_path):
    model = reward_model(tiny_model_dir)
    before = model.score(tokenizer, *PAIRS)
    model.save(tmp_path, tokenizer, info={"eval_reward_mean": 0.1})

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["pad_token_id"] not in end_of_turn_ids(tokenizer)  # else transformers reads a token early
    assert not (tmp_path / LEGACY_VALUE_HEAD).exists()
    assert json.loads((tmp_path / REWARD_CONFIG).read_text())["eval_reward_mean"] == 0.1
    assert tokenizer.pad_token == "<|im_end|>"  # the caller's tokenizer is left alone

    loaded = load_reward_model(tmp_path)
    assert max_gap(before, loaded.score(load_tokenizer(tmp_path), *PAIRS)) < 1e-6
    assert max_gap(before, transformers_rewards(tmp_path, *PAIRS)) < 1e-5


def test_first_format_folders_load_and_convert_with_the_same_rewards(tiny_model_dir, tokenizer, tmp_path):
    """A trained first-format head has bias 0 (Bradley-Terry gives a bias no gradient): loading
    and converting it changes no reward."""
    model = first_format_model(tiny_model_dir, bias=0.0)
    expected = model.score(tokenizer, *PAIRS)
    save_first_format(model, tokenizer, tmp_path / "v1")
    legacy = load_reward_model(tmp_path / "v1")
    assert max_gap(expected, legacy.score(tokenizer, *PAIRS)) < 1e-6

    legacy.save(tmp_path / "v2", load_tokenizer(tmp_path / "v1"))
    assert max_gap(expected, load_reward_model(tmp_path / "v2").score(tokenizer, *PAIRS)) < 1e-6
    assert max_gap(expected, transformers_rewards(tmp_path / "v2", *PAIRS)) < 1e-5


def test_a_nonzero_first_format_bias_scores_as_before_and_converting_drops_it(tiny_model_dir, tokenizer, tmp_path,
                                                                             caplog):
    model = first_format_model(tiny_model_dir, bias=0.25)
    expected = model.score(tokenizer, *PAIRS)
    save_first_format(model, tokenizer, tmp_path / "v1")
    legacy = load_reward_model(tmp_path / "v1")
    assert max_gap(expected, legacy.score(tokenizer, *PAIRS)) < 1e-6
    with caplog.at_level(logging.WARNING, logger="xwin.models.reward"):
        legacy.save(tmp_path / "v2", tokenizer)
    assert "bias [0.25] dropped" in caplog.text
    converted = load_reward_model(tmp_path / "v2").score(tokenizer, *PAIRS)
    # every reward moves by the same constant: no ranking and no margin changes
    assert all(abs(a - b - 0.25) < 1e-5 for a, b in zip(expected, converted))


def test_the_saved_pad_token_is_never_an_end_of_turn_token(tokenizer):
    assert reward_pad_token(tokenizer) == ("<|endoftext|>", 0)  # SmolLM2: pad = <|im_end|>, the unk is free
    own_pad = copy.deepcopy(tokenizer)
    own_pad.pad_token = "<repo_name>"
    assert reward_pad_token(own_pad) == ("<repo_name>", 3)


def test_folders_that_are_no_reward_model_are_user_errors(tiny_model_dir, tmp_path):
    from xwin.core.errors import UserError

    with pytest.raises(UserError, match="no config.json"):
        load_reward_model(tmp_path)
    with pytest.raises(UserError, match="not a reward model folder"):
        load_reward_model(tiny_model_dir)  # a causal LM
