"""The reward model: where the reward is read, that padding never changes it, and that what the
rm stage saves loads back to the same numbers."""

from __future__ import annotations

import torch
from transformers import AutoModel

from xwin.data.dataset import PromptReplyCollator, pad_token_id
from xwin.data.templating import tokenize_prompt_and_reply
from xwin.models.reward import (
    REWARD_CONFIG,
    VALUE_HEAD,
    RewardModel,
    last_token_index,
    load_reward_model,
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


def test_saved_reward_model_loads_back_with_the_same_rewards(tiny_model_dir, tokenizer, tmp_path):
    model = reward_model(tiny_model_dir)
    with torch.no_grad():
        model.value_head.bias.fill_(0.25)
    before = model.score(tokenizer, [SHORT[0], LONG[0]], [SHORT[1], LONG[1]])
    model.save(tmp_path, tokenizer, info={"eval_reward_mean": 0.1})
    assert (tmp_path / VALUE_HEAD).exists() and (tmp_path / REWARD_CONFIG).exists()
    loaded = load_reward_model(tmp_path)
    after = loaded.score(tokenizer, [SHORT[0], LONG[0]], [SHORT[1], LONG[1]])
    assert max(abs(a - b) for a, b in zip(before, after)) < 1e-6
    assert AutoModel.from_pretrained(tmp_path).config.hidden_size == model.config.hidden_size
