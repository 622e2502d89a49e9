"""The one training loop behind sft, rm, rs and dpo.

A stage builds its model, tokenizes its data and writes a `loss_fn(engine, batch) -> (loss,
metrics)`; everything else is here, in the order it happens: plan the batches, build the DeepSpeed
engine, resume from the last checkpoint, then for each optimizer step run the micro-batches
(forward, backward, step), log, evaluate, checkpoint. Metrics go to a progress bar on rank 0 and
to the stage's tracker (`xwin.train.tracking`: `metrics.jsonl`, which the controller plots, with
one object per logged step: step, epoch, loss, lr, tokens_per_s, the stage's own metrics, eval_*
when an evaluation ran; TensorBoard; MLflow and W&B when configured).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from xwin.core.errors import UserError
from xwin.train.checkpoint import Checkpoints, TrainState
from xwin.train.config import TrainConfig
from xwin.train.data import BatchSchedule, eval_rank_batches
from xwin.train.deepspeed_setup import build_engine
from xwin.train.launch import ProcessPlace
from xwin.train.tracking import Tracker

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Any, Batch], tuple[torch.Tensor, dict[str, Any]]]


@dataclass
class TrainTask:
    """What a stage hands the loop."""

    name: str  # the stage, for the progress bar and logs
    model: torch.nn.Module
    train_examples: Sequence[Any]
    eval_examples: Sequence[Any]
    lengths: Sequence[int]  # tokens of each training example (for grouping and packing)
    collate: Callable[[list[Any]], Batch]  # examples -> batch with an attention_mask (1 on real tokens)
    loss_fn: LossFn
    collate_rows: Callable[[list[list[Any]]], Batch] | None = None  # packed rows -> batch


@dataclass
class TrainResult:
    engine: Any
    state: TrainState
    history: list[dict] = field(default_factory=list)
    final_eval: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """Last logged training values and the final evaluation, for the stage's manifest."""
        last = {k: v for k, v in (self.history[-1] if self.history else {}).items()
                if not k.startswith("eval_")}
        out = {f"train_{k}" if k not in ("step", "epoch") else k: v for k, v in last.items()}
        out.update(self.final_eval)
        out["tokens"] = self.state.tokens
        if self.resumed_from_step is not None:
            out["resumed_from_step"] = self.resumed_from_step
        return out


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class Window:
    """Sums since the last log line; reduced over ranks when read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.tokens = torch.zeros((), device=self.device)
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, metrics: dict[str, Any], tokens: torch.Tensor) -> None:
        for key, value in {"loss": loss, **metrics}.items():
            value = torch.as_tensor(value, device=self.device).detach().float()
            self.sums[key] = self.sums.get(key, 0) + value
        self.micro_batches += 1
        self.tokens += tokens

    def read(self) -> tuple[dict[str, float], int, float]:
        """(mean metrics over every rank's micro-batches, tokens of all ranks, seconds)."""
        keys = sorted(self.sums)
        micro_batches = torch.tensor(float(self.micro_batches), device=self.device)
        packed = torch.stack([self.sums[k] for k in keys] + [micro_batches, self.tokens.float()])
        packed = all_reduce_sum(packed).tolist()
        count = packed[-2]
        return {k: v / count for k, v in zip(keys, packed)}, int(packed[-1]), time.perf_counter() - self.started


@torch.no_grad()
def evaluate(engine, task: TrainTask, config: TrainConfig, place: ProcessPlace,
             device: torch.device) -> dict[str, float]:
    """Held-out loss and the stage's metrics, averaged per example over all ranks."""
    if not task.eval_examples:
        return {}
    engine.eval()
    sums: dict[str, torch.Tensor] = {}
    weight = torch.zeros((), device=device)
    for slots in eval_rank_batches(len(task.eval_examples), config.micro_batch_size, place.world_size, place.rank):
        real = [task.eval_examples[i] for i in slots if i >= 0]
        # a rank with nothing left still runs a forward (ZeRO-3 gathers weights collectively)
        batch = to_device(task.collate(real or [task.eval_examples[0]]), device)
        loss, metrics = task.loss_fn(engine, batch)
        for key, value in {"loss": loss, **metrics}.items():
            sums[key] = sums.get(key, 0) + torch.as_tensor(value, device=device).float() * len(real)
        weight += len(real)
    engine.train()
    keys = sorted(sums)
    totals = all_reduce_sum(torch.stack([sums[k] for k in keys] + [weight])).tolist()
    return {f"eval_{k}": v / totals[-1] for k, v in zip(keys, totals)}


@torch.no_grad()
def gather_per_example(model, examples: Sequence[Any], collate: Callable[[list[Any]], Batch],
                       micro_batch_size: int, place: ProcessPlace, device: torch.device,
                       per_batch: Callable[[Any, Batch], Sequence[Sequence[float]]]) -> list[tuple[float, ...]]:
    """One row of floats per example, computed by `per_batch(model, batch)` (a row per example of
    the batch, in order, every row as long): each rank runs its share, and every rank gets every
    row back in the order of `examples` (the RM's held-out rewards, DPO's reference log-probs). A
    rank with nothing left still runs a forward: ZeRO-3 gathers weights collectively.

    The rows travel as float64 tensors, not through all_gather_object: that unpickles whatever
    another rank sends, and the ranks' ports are reachable beyond the gang on some clusters."""
    was_training = model.training
    model.eval()
    rows: list[list[float]] = []  # [example index, *values]
    width = 0
    for slots in eval_rank_batches(len(examples), micro_batch_size, place.world_size, place.rank):
        real = [i for i in slots if i >= 0]
        batch = to_device(collate([examples[i] for i in real] or [examples[0]]), device)
        values = per_batch(model, batch)
        width = max(width, *(len(v) for v in values))
        rows += ([float(i), *map(float, v)] for i, v in zip(real, values))  # a filler's are dropped
    model.train(was_training)
    sizes = [torch.zeros(2, dtype=torch.long, device=device) for _ in range(place.world_size)]
    dist.all_gather(sizes, torch.tensor([len(rows), width], dtype=torch.long, device=device))
    most = max(int(size[0]) for size in sizes)
    width = max(int(size[1]) for size in sizes)
    mine = torch.zeros(most, 1 + width, dtype=torch.float64, device=device)
    if rows:
        mine[:len(rows)] = torch.tensor(rows, dtype=torch.float64, device=device)
    parts = [torch.empty_like(mine) for _ in range(place.world_size)]
    dist.all_gather(parts, mine)
    gathered: list[tuple[float, ...]] = [()] * len(examples)
    for part, size in zip(parts, sizes):
        for row in part[:int(size[0])].tolist():
            gathered[int(row[0])] = tuple(row[1:])
    return gathered


def count_steps(config: TrainConfig, micro_batches_per_epoch: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, int(config.epochs * micro_batches_per_epoch) // config.gradient_accumulation_steps)


def train(
    task: TrainTask,
    config: TrainConfig,
    place: ProcessPlace,
    device: torch.device,
    *,
    tracker: Tracker,
    checkpoints: Checkpoints | None = None,
    prepare: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train task.model; returns the engine (its module holds the trained weights) and metrics.
    `prepare(engine)` runs once before resuming (DPO computes reference log-probs there, while
    the weights are still the reference's). `tracker` gets the config and every logged record;
    the loop closes it only on failure (the stage logs its final metrics, then closes it)."""
    try:
        return _train(task, config, place, device, tracker, checkpoints, prepare)
    except BaseException:
        tracker.close(failed=True)
        raise


def _train(task: TrainTask, config: TrainConfig, place: ProcessPlace, device: torch.device, history: Tracker,
           checkpoints: Checkpoints | None, prepare: Callable[[Any], None] | None) -> TrainResult:
    packed = config.batching == "packed"
    if packed and task.collate_rows is None:
        raise UserError(f"stage {task.name}: batching 'packed' is for SFT/RS; use length_grouped "
                        "(rm and dpo: padding_free: true lays each micro-batch out without padding)")
    batches = BatchSchedule(
        lengths=task.lengths, micro_batch_size=config.micro_batch_size, world_size=place.world_size,
        mode=config.batching, max_length=config.max_length, seed=config.seed,
    )
    per_epoch = batches.micro_batches_per_epoch()
    if per_epoch == 0:
        raise UserError(
            f"stage {task.name}: {len(task.train_examples)} training examples cannot fill one "
            f"micro-batch of {config.micro_batch_size} on each of {place.world_size} processes"
        )
    total_steps = count_steps(config, per_epoch)
    engine = build_engine(task.model, config, place, total_steps)
    torch.manual_seed(config.seed + place.rank)  # dropout differs per rank, reproducibly
    if prepare is not None:
        prepare(engine)

    state = TrainState()
    resumed_from = None
    if checkpoints is not None and config.resume and (restored := checkpoints.restore(engine)):
        state, records = restored
        resumed_from = state.step
        history.restart(records)
    else:
        history.restart([])
    history.log_config({"stage": task.name, "world_size": place.world_size, "total_steps": total_steps,
                        **config.model_dump(mode="json", exclude={"tracking"})})

    epoch_cache: dict[int, list] = {}

    def next_rows() -> list:
        while True:
            if state.epoch not in epoch_cache:
                epoch_cache.clear()
                epoch_cache[state.epoch] = batches.rank_batches(state.epoch, place.rank)
            rows = epoch_cache[state.epoch]
            if state.micro_batch < len(rows):
                state.micro_batch += 1
                return rows[state.micro_batch - 1]
            state.epoch, state.micro_batch = state.epoch + 1, 0

    def collate(rows: list[list[int]]) -> Batch:
        if packed:
            return task.collate_rows([[task.train_examples[i] for i in row] for row in rows])
        return task.collate([task.train_examples[row[0]] for row in rows])

    log.info("%s: %d steps (%d micro-batches/epoch/rank, accumulation %d, %d processes)%s",
             task.name, total_steps, per_epoch, config.gradient_accumulation_steps, place.world_size,
             f", resuming at step {state.step}" if resumed_from is not None else "")
    engine.train()
    window = Window(device)
    bar = tqdm(total=total_steps, initial=state.step, desc=task.name, unit="step",
               disable=not place.is_main, dynamic_ncols=True)
    final_eval: dict[str, float] = {}
    while state.step < total_steps:
        lr = engine.get_lr()[0]
        for _ in range(config.gradient_accumulation_steps):
            batch = to_device(collate(next_rows()), device)
            loss, metrics = task.loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            window.add(loss, metrics, batch["attention_mask"].sum())
        state.step += 1
        bar.update(1)
        last = state.step == total_steps
        do_eval = last or (config.eval_every and state.step % config.eval_every == 0)
        do_save = checkpoints is not None and config.save_every and state.step % config.save_every == 0 and not last
        # a checkpoint step is always logged: the saved state then holds no half-counted window
        if do_eval or do_save or last or state.step % config.log_every == 0:
            means, tokens, seconds = window.read()
            state.tokens += tokens
            record = {"step": state.step, "epoch": round(state.epoch + state.micro_batch / max(1, per_epoch), 4),
                      **means, "lr": lr, "tokens_per_s": tokens / max(seconds, 1e-9)}
            if do_eval:
                eval_metrics = evaluate(engine, task, config, place, device)
                record.update(eval_metrics)
                if last:
                    final_eval = eval_metrics
            history.append(record)
            bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
            window.reset()
        if do_save:
            checkpoints.save(engine, state, history.records)
            window.reset()  # checkpoint time is not training throughput
    bar.close()
    return TrainResult(engine, state, history.records, final_eval, resumed_from)
