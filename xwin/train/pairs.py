"""Preference pairs as training examples (RM and DPO): both replies tokenized with their shared
context, and batches that put every chosen reply first and every rejected one after it, so one
forward pass covers both sides of each pair."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xwin.data.dataset import PromptReplyCollator
from xwin.data.schemas import PreferencePair
from xwin.data.templating import PromptReplySample, tokenize_prompt_and_reply


@dataclass
class PairExample:
    index: int  # position among the usable pairs (reference log-probs are keyed by it)
    chosen: PromptReplySample
    rejected: PromptReplySample
    score_margin: float | None = None  # chosen_score - rejected_score when both are given

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def tokenize_pairs(
    records: Iterable[PreferencePair], tokenizer: Any, max_length: int, *, progress: bool = False
) -> tuple[list[PairExample], dict[str, Any]]:
    """Usable pairs and a report (kept, context_truncated, dropped by reason). A pair is dropped
    when a reply cannot fit in max_length even with the context cut, or both replies are equal."""
    pairs: list[PairExample] = []
    dropped: Counter[str] = Counter()
    truncated = 0
    if progress:
        from tqdm import tqdm

        records = tqdm(records, desc="tokenize pairs", unit=" pair", mininterval=2.0)
    for record in records:
        if record.chosen == record.rejected:
            dropped["identical_replies"] += 1
            continue
        chosen = tokenize_prompt_and_reply(tokenizer, record.context, record.chosen, max_length)
        rejected = tokenize_prompt_and_reply(tokenizer, record.context, record.rejected, max_length)
        if chosen is None or rejected is None:
            dropped["reply_longer_than_max_length"] += 1
            continue
        margin = None
        if record.chosen_score is not None and record.rejected_score is not None:
            margin = record.chosen_score - record.rejected_score
        truncated += chosen.context_truncated or rejected.context_truncated
        pairs.append(PairExample(len(pairs), chosen, rejected, margin))
    report = {"kept": len(pairs), "context_truncated": truncated, "dropped": dict(sorted(dropped.items()))}
    return pairs, report


@dataclass
class PairCollator:
    """[chosen_0..chosen_n-1, rejected_0..rejected_n-1], right-padded: input_ids, attention_mask,
    reply_mask [2n, T]; pair_index [n]; score_margin [n] (NaN where a pair has no scores)."""

    pad_token_id: int

    def __call__(self, pairs: Sequence[PairExample]) -> dict[str, torch.Tensor]:
        batch = PromptReplyCollator(self.pad_token_id)([p.chosen for p in pairs] + [p.rejected for p in pairs])
        batch["pair_index"] = torch.tensor([p.index for p in pairs], dtype=torch.long)
        batch["score_margin"] = torch.tensor(
            [float("nan") if p.score_margin is None else p.score_margin for p in pairs], dtype=torch.float32
        )
        return batch
