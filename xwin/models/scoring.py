"""Scoring (context, response) pairs with a reward model, in length-sorted batches, and the
scorer interface both backends share (HfRewardScorer in hf_scoring.py, VllmRewardScorer in
vllm_scoring.py, opened by scorer_factory.py).

Sorting by length before batching means each batch pads only to its own longest sequence, which
for 64 responses of very different lengths saves most of the padded compute; the scores are
returned in input order regardless. A batch is capped by padded tokens (rows x its longest
sequence, `max_tokens`) as well as by rows: a fixed row count either wastes memory on short
sequences or runs out of it on long ones. Batches are right-padded and the attention mask is
built from the true lengths (never from pad ids: SmolLM2's pad token is its end-of-turn token,
which ends every scored sequence).

A diverged reward model (NaN or infinite weights, an overflow in half precision) gives rewards
that are not numbers; ranking on them would pick responses at random, so they are an error
(NonFiniteRewards), never a score.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from xwin.core.errors import UserError
from xwin.data.dataset import pad_right


class NonFiniteRewards(UserError):
    """The model gave NaN/Inf rewards: `indices` of the sequences, in input order. A user error
    (exit 2, never retried): the same weights give the same NaNs on every attempt."""

    def __init__(self, indices: list[int], values: list[float], total: int):
        self.indices, self.values, self.total = indices, values, total
        super().__init__(f"reward model: {len(indices)} of {total} rewards are not finite (first: "
                         f"sequence {indices[0]}, {values[0]}); the reward model has diverged")


def length_sorted_batches(lengths: Sequence[int], batch_size: int, sort: bool = True,
                          max_tokens: int | None = None) -> list[list[int]]:
    """Index batches of at most `batch_size` rows and, when `max_tokens` is set, at most that
    many padded tokens (rows x the batch's longest); a sequence longer than `max_tokens` gets a
    batch of its own. Sorted longest first (a batch too big for memory fails at once, not an
    hour in), or in input order when `sort` is False."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    batches: list[list[int]] = []
    longest = 0
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
                max_tokens is None or (len(batches[-1]) + 1) * max(longest, lengths[i]) <= max_tokens):
            batches[-1].append(i)
            longest = max(longest, lengths[i])
        else:
            batches.append([i])
            longest = lengths[i]
    return batches


def check_finite(scores: Sequence[float]) -> list[float]:
    """`scores` as floats; NonFiniteRewards naming every NaN/Inf (both backends)."""
    scores = [float(value) for value in scores]
    if bad := [i for i, value in enumerate(scores) if not math.isfinite(value)]:
        raise NonFiniteRewards(bad, [scores[i] for i in bad], len(scores))
    return scores


@torch.inference_mode()
def score_sequences(
    reward_model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
    sort_by_length: bool = True,
    max_batch_tokens: int | None = None,
    progress: bool = True,
) -> list[float]:
    """One reward per token sequence (context + reply, ending with the reply's end-of-turn
    token), in input order. `reward_model(input_ids, attention_mask)` returns rewards [B].
    Raises NonFiniteRewards if any reward is NaN or infinite."""
    if not sequences:
        return []
    device = next(reward_model.parameters()).device
    scores: list[float] = [0.0] * len(sequences)
    batches = length_sorted_batches([len(s) for s in sequences], batch_size, sort_by_length, max_batch_tokens)
    for batch in tqdm(batches, desc="score", unit="batch", disable=not progress):
        input_ids = pad_right([sequences[i] for i in batch], pad_id)
        attention_mask = pad_right([[1] * len(sequences[i]) for i in batch], 0)
        rewards = reward_model(input_ids.to(device), attention_mask.to(device))
        for i, value in zip(batch, rewards.float().cpu().tolist()):
            scores[i] = float(value)
    return check_finite(scores)


class RewardScorer(ABC):
    """A loaded reward model that turns token sequences (chat-templated context + reply, ending
    with the reply's end-of-turn token) into rewards, in input order. `backend` names it in
    logs and metrics. Use through scorer_factory.open_reward_scorer."""

    backend: str

    @abstractmethod
    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """One reward per sequence; NonFiniteRewards if any is NaN or infinite."""

    def close(self) -> None:
        """Free the model's memory now (the vLLM engine's process)."""
