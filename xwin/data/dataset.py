"""From records to training batches: tokenized SFT samples (with a count of what was dropped and
why), right-padding collators, and length-grouped batches (less padding per step)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from xwin.data.schemas import Conversation
from xwin.data.templating import (
    IGNORE_INDEX,
    PromptReplySample,
    TokenizedSample,
    tokenize_conversations,
)

T = TypeVar("T")


@dataclass
class DropReport:
    """What tokenization kept, cut and dropped; stages put `as_dict()` into their metrics."""

    kept: int = 0
    truncated: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    trained_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped": dict(sorted(self.dropped.items())),
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
        }


def build_sft_dataset(
    records: Iterable[Conversation],
    tokenizer: Any,
    max_length: int,
    *,
    progress: bool = False,
    chunk_size: int = 256,
) -> tuple[list[TokenizedSample], DropReport]:
    """Tokenize conversations for SFT/RS (assistant turns trained), `chunk_size` at a time in
    one batched tokenizer call. A conversation whose trained tokens all lie beyond `max_length`
    is dropped and counted, never kept with nothing to learn."""
    report = DropReport()
    samples: list[TokenizedSample] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="tokenize", unit=" conv", mininterval=2.0)
    for chunk in _chunks(records, chunk_size):
        for sample in tokenize_conversations(tokenizer, [r.messages for r in chunk], max_length):
            if sample is None:
                report.dropped["no_trained_tokens_within_max_length"] += 1
                continue
            samples.append(sample)
            report.kept += 1
            report.truncated += sample.truncated
            report.tokens += len(sample)
            report.trained_tokens += sample.num_trained
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return samples, report


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def pad_token_id(tokenizer: Any) -> int:
    """The pad id (eos when the tokenizer has no pad token: padded positions are masked anyway)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
    return int(pad)


def pad_right(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """A [batch, longest] LongTensor, each row padded on the right with `value`."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


@dataclass
class SftCollator:
    """SFT batches: input_ids, attention_mask and labels (IGNORE_INDEX on padding), right-padded.
    A class rather than a closure so DataLoader workers can pickle it."""

    pad_token_id: int

    def __call__(self, samples: Sequence[TokenizedSample]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": pad_right([s.input_ids for s in samples], self.pad_token_id),
            "attention_mask": pad_right([[1] * len(s) for s in samples], 0),
            "labels": pad_right([s.labels for s in samples], IGNORE_INDEX),
        }


@dataclass
class PromptReplyCollator:
    """RM/DPO batches: input_ids, attention_mask and reply_mask (1 on reply tokens), right-padded.
    For pairs, collate the chosen and the rejected samples as one list (chosen first)."""

    pad_token_id: int

    def __call__(self, samples: Sequence[PromptReplySample]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": pad_right([s.input_ids for s in samples], self.pad_token_id),
            "attention_mask": pad_right([[1] * len(s) for s in samples], 0),
            "reply_mask": pad_right([s.reply_mask for s in samples], 0),
        }


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int = 0, group_factor: int = 50
) -> list[list[int]]:
    """Index batches of similar lengths: shuffle, sort within windows of `group_factor` batches
    by length, cut into batches, shuffle the batches. Random enough for SGD, far less padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group_factor
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
