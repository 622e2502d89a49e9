"""Preference pairs as training examples (RM and DPO): both replies tokenized with their shared
context, and batches that put every chosen reply first and every rejected one after it, so one
forward pass covers both sides of each pair.

Two layouts of a micro-batch of n pairs, the same sequences in the same order:
- padded (`PairCollator`): 2n right-padded rows [2n, T] with an attention mask;
- padding-free (`PaddingFreePairCollator`, `padding_free: true`): one row [1, L] of the 2n
  sequences back to back, L their total length, with position ids restarting at 0 for each and
  `cu_seqlens` [2n + 1] marking where each starts. The model gets position ids and no attention
  mask: transformers then keeps attention inside each sequence (flash_attention_2 through its
  varlen kernels; sdpa and eager through a block-diagonal mask it derives from the position
  ids, transformers >= 4.54). Per-sequence values (summed reply log-probs, the reward at the last
  token) are read at the boundaries.
`model_inputs(batch)` gives the model what either layout needs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xwin.core.errors import UserError
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


@dataclass
class PaddingFreePairCollator:
    """[chosen_0..chosen_n-1, rejected_0..rejected_n-1] in one row, no padding: input_ids,
    position_ids (0.. per sequence), reply_mask [1, L]; cu_seqlens [2n + 1] (sequence k is
    columns cu_seqlens[k]:cu_seqlens[k+1]); pair_index, score_margin [n] as PairCollator's.
    `attention_mask` (all ones) counts tokens for the loop; the model never gets it. The first
    token of each sequence is never a reply target: its logit would come from the sequence
    before it (in a padded row, nothing predicts a row's first token either)."""

    def __call__(self, pairs: Sequence[PairExample]) -> dict[str, torch.Tensor]:
        samples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        ids, positions, replies, starts = [], [], [], [0]
        for sample in samples:
            ids += sample.input_ids
            positions += range(len(sample))
            replies += [0] + sample.reply_mask[1:]
            starts.append(starts[-1] + len(sample))
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "reply_mask": torch.tensor([replies], dtype=torch.long),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "cu_seqlens": torch.tensor(starts, dtype=torch.long),
            "pair_index": torch.tensor([p.index for p in pairs], dtype=torch.long),
            "score_margin": torch.tensor(
                [float("nan") if p.score_margin is None else p.score_margin for p in pairs], dtype=torch.float32
            ),
        }


def pair_collator(pad_token_id: int, padding_free: bool) -> PairCollator | PaddingFreePairCollator:
    return PaddingFreePairCollator() if padding_free else PairCollator(pad_token_id)


def is_padding_free(batch: dict[str, torch.Tensor]) -> bool:
    return "cu_seqlens" in batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | bool]:
    """The forward's arguments for either layout. Padding-free: position ids and no mask, and no
    cache: transformers derives the per-sequence attention from position ids only when it gets
    neither an attention mask nor a cache (with a cache it silently attends across sequences)."""
    if is_padding_free(batch):
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def sequence_sums(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Per-sequence sums [S] of a padding-free row's per-position values [L] (a gradient flows
    back to each position)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths.to(values.device),
                                    output_size=values.shape[0])
    return values.new_zeros(len(lengths)).index_add(0, owner, values)


def check_padding_free(model: torch.nn.Module, stage: str) -> None:
    """A clear error, before training, for a model whose attention would cross the sequences of
    a padding-free row: transformers builds per-sequence masks from position ids (for sdpa and
    eager) in `masking_utils` since 4.54, and only for architectures that take their masks from
    it; an older release or another architecture would mix the sequences silently."""
    import importlib
    import sys

    try:
        masking = importlib.import_module("transformers.masking_utils")
    except ImportError:
        masking = None
    if masking is None or not hasattr(masking, "find_packed_sequence_indices"):
        import transformers

        raise UserError(f"stage {stage}: padding_free needs transformers >= 4.54 (installed: "
                        f"{transformers.__version__}); upgrade it or set padding_free: false")
    modeling = sys.modules.get(type(model).__module__)
    if not any(hasattr(modeling, name) for name in ("create_causal_mask", "create_sliding_window_causal_mask")):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UserError(f"stage {stage}: model type {kind!r} does not build its attention masks with "
                        "transformers' masking_utils, so the sequences of a padding-free row would attend "
                        "to each other; set padding_free: false")
