"""Which examples each process trains on, in which order: deterministic from (seed, epoch), so a
resumed run can skip to the exact micro-batch it stopped at without touching the data.

A plan for one epoch is a list of global micro-batches; each holds one list of rows per rank
(every rank gets the same number of micro-batches, as ZeRO's collectives need), and a row is a
list of example indices: one index, or several packed into one row.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from xwin.data.dataset import length_grouped_batches, pad_right
from xwin.data.templating import IGNORE_INDEX, TokenizedSample

Row = list[int]  # example indices sharing one row (one unless packed)


def split_train_eval(count: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Example indices for training and for held-out evaluation (a seeded random split; at
    least one eval example when eval_fraction > 0 and there are at least two examples)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_eval = round(count * eval_fraction)
    if eval_fraction > 0 and count >= 2:
        n_eval = max(n_eval, 1)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def pack_rows(lengths: Sequence[int], max_length: int, seed: int, window: int = 2048) -> list[Row]:
    """Greedy first-fit-decreasing packing of examples into rows of at most max_length tokens,
    within shuffled windows (so the row mix changes with the seed)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows: list[Row] = []
    for start in range(0, len(order), window):
        bins: list[tuple[int, Row]] = []  # (tokens used, indices)
        for i in sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True):
            for b, (used, row) in enumerate(bins):
                if used + lengths[i] <= max_length:
                    bins[b] = (used + lengths[i], row + [i])
                    break
            else:
                bins.append((lengths[i], [i]))
        rows.extend(row for _, row in bins)
    random.Random(seed + 1).shuffle(rows)
    return rows


@dataclass(frozen=True)
class BatchSchedule:
    """Micro-batches for every epoch, for every rank."""

    lengths: Sequence[int]  # tokens per example (training examples only)
    micro_batch_size: int
    world_size: int
    mode: str = "length_grouped"  # length_grouped | packed | random
    max_length: int = 0  # packing only
    seed: int = 0

    def global_batches(self, epoch: int) -> list[list[list[Row]]]:
        """[micro-batch][rank] -> rows. Remainders that cannot fill every rank are dropped."""
        seed = self.seed * 1_000_003 + epoch
        per_step = self.micro_batch_size * self.world_size
        if self.mode == "packed":
            rows = pack_rows(self.lengths, self.max_length, seed)
        else:
            rows = [[i] for i in range(len(self.lengths))]
        if self.mode == "length_grouped":
            row_lengths = [sum(self.lengths[i] for i in row) for row in rows]
            groups = length_grouped_batches(row_lengths, per_step, seed=seed)
        else:
            order = list(range(len(rows)))
            random.Random(seed).shuffle(order)
            groups = [order[k : k + per_step] for k in range(0, len(order), per_step)]
        batches = []
        for group in groups:
            if len(group) < per_step:
                continue
            # consecutive slices: after length grouping, ranks get rows of similar length
            batches.append(
                [
                    [rows[g] for g in group[r * self.micro_batch_size : (r + 1) * self.micro_batch_size]]
                    for r in range(self.world_size)
                ]
            )
        return batches

    def micro_batches_per_epoch(self) -> int:
        return len(self.global_batches(0))

    def rank_batches(self, epoch: int, rank: int) -> list[list[Row]]:
        return [batch[rank] for batch in self.global_batches(epoch)]


def eval_rank_batches(count: int, micro_batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """Held-out examples split over ranks in equal numbers of batches (ZeRO-3 needs every rank
    in every forward). Padded slots repeat example 0 and are marked -1 for the caller to weigh
    zero."""
    per_step = micro_batch_size * world_size
    steps = -(-count // per_step) if count else 0
    slots = list(range(count)) + [-1] * (steps * per_step - count)
    return [
        slots[s * per_step + rank * micro_batch_size : s * per_step + (rank + 1) * micro_batch_size]
        for s in range(steps)
    ]


@dataclass
class PackedSftCollator:
    """Rows of several SFT samples: concatenated, position ids restarting at each sample (which
    transformers turns into attention kept inside each sample), and the first token of each
    sample never a target of the previous one. `attention_mask` marks real tokens; it is for
    counting, the model gets `position_ids` instead."""

    pad_token_id: int

    def __call__(self, rows: Sequence[Sequence[TokenizedSample]]) -> dict[str, torch.Tensor]:
        ids, labels, positions = [], [], []
        for row in rows:
            ids.append([t for s in row for t in s.input_ids])
            labels.append([IGNORE_INDEX if k == 0 else lab for s in row for k, lab in enumerate(s.labels)])
            positions.append([k for s in row for k in range(len(s))])
        width = max(len(r) for r in ids)
        # padding continues as its own "sequence" (positions from 0) so it never joins a sample
        pad_positions = [p + list(range(width - len(p))) for p in positions]
        return {
            "input_ids": pad_right(ids, self.pad_token_id),
            "labels": pad_right(labels, IGNORE_INDEX),
            "position_ids": pad_right(pad_positions, 0),
            "attention_mask": pad_right([[1] * len(r) for r in ids], 0),
        }
