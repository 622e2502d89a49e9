"""Reward scoring in this process with transformers: the reward model loaded by
load_reward_model and batched by score_sequences (length-sorted, capped by rows and padded
tokens). Apart from scoring.py, which reward.py imports, so that neither imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xwin.models.scoring import RewardScorer, score_sequences


class HfRewardScorer(RewardScorer):
    """The reward model in this process (transformers), batched by score_sequences."""

    backend = "hf"

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", attn_implementation: str = "sdpa",
                 batch_size: int = 16, max_batch_tokens: int | None = None, sort_by_length: bool = True):
        from xwin.data.dataset import pad_token_id
        from xwin.models.loading import load_tokenizer
        from xwin.models.reward import load_reward_model

        # eval mode, on the device policy's device
        self.model = load_reward_model(model_dir, dtype, attn_implementation=attn_implementation)
        self.pad_id = pad_token_id(load_tokenizer(model_dir))
        self.batch_size, self.max_batch_tokens, self.sort_by_length = batch_size, max_batch_tokens, sort_by_length

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        return score_sequences(self.model, sequences, batch_size=self.batch_size, pad_id=self.pad_id,
                               sort_by_length=self.sort_by_length, max_batch_tokens=self.max_batch_tokens,
                               progress=False)

    def close(self) -> None:
        del self.model
