"""Stage `dpo`: Direct Preference Optimization (Xwin-LM-DPO) from the RS (or SFT) model against a
frozen reference copy of it, on the chosen/rejected pairs the select stage drew from Xwin-Set.

Reference log-probs: `precompute` (default) runs the starting model over every pair once, before
the first step (when policy and reference are the same weights), and keeps the numbers; no
second model in memory. They are cached in the workdir keyed by the model, the data and the
max length, and written to the output as reference_logps.json. `online` keeps a frozen copy and
runs it beside the policy at every step (needed when the reference differs from the start).
With LoRA the reference is the policy's own base, read with the adapters switched off
(`xwin.train.lora.base_weights`): `online` then costs one more forward a step and no second
model, and `precompute` computes its table the same way.
SimPO is reference-free: neither happens. Sequence log-probs sum the reply's tokens only (IPO
and SimPO: their mean); `rpo_alpha` adds the chosen reply's per-token NLL to any of the losses.
`padding_free: true` runs each micro-batch as one row without padding (`xwin.train.pairs`), for
the policy, every reference path and evaluation alike.

Inputs: `model` (HF folder) and `train` (PreferencePair JSONL). Output: an HF folder.
Config: `dpo_config.py` (torch-free, read by the controller)."""

from __future__ import annotations

import json
import logging

import torch
import torch.distributed as dist

from xwin.artifacts.stage_io import StageContext
from xwin.core.digests import digest
from xwin.core.files import atomic_file
from xwin.data.dataset import pad_token_id
from xwin.models.loading import load_causal_lm, load_tokenizer
from xwin.train.deepspeed_setup import build_frozen_engine, load_dtype, sharded_model_init
from xwin.train.dpo_config import DpoConfig
from xwin.train.harness import (
    checkpoints_for,
    export_causal_lm,
    finish,
    input_fingerprint,
    read_training_pairs,
    require_hardware,
    run_distributed,
    tracker_for,
)
from xwin.train.launch import ProcessPlace
from xwin.train.loop import TrainTask, gather_per_example, train
from xwin.train.lora import base_weights, lora_metrics, trainable_model
from xwin.train.losses import dpo_loss, reply_labels, rpo_nll_loss, simpo_loss, token_logps
from xwin.train.pairs import (
    PairExample,
    check_padding_free,
    is_padding_free,
    model_inputs,
    pair_collator,
    sequence_sums,
)

log = logging.getLogger(__name__)


def reply_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each reply [2n] and its token count [2n], from padded rows or one
    padding-free row (summed between its sequence boundaries)."""
    logits = model(**model_inputs(batch)).logits
    logps, counted = token_logps(logits, reply_labels(batch["input_ids"], batch["reply_mask"]))
    if not is_padding_free(batch):
        return logps.sum(-1), counted.sum(-1)
    # logps[0, t] is log p(token t + 1): a 0 in front puts token k's value at index k, in its own
    # sequence (a sequence's first token is never a reply target, so no sum crosses a boundary)
    per_token = torch.cat([logps.new_zeros(1), logps[0]])
    count = torch.cat([counted.new_zeros(1), counted[0]]).to(logps.dtype)
    return sequence_sums(per_token, batch["cu_seqlens"]), sequence_sums(count, batch["cu_seqlens"]).long()


def compute_reference_logps(model, pairs: list[PairExample], collate, micro_batch_size: int,
                            place: ProcessPlace, device) -> torch.Tensor:
    """[pairs, 2] summed reply log-probs (chosen, rejected), computed by all ranks."""
    def per_batch(model, batch):
        sums, _ = reply_logps(model, batch)
        n = batch["pair_index"].shape[0]
        return list(zip(sums[:n].tolist(), sums[n:].tolist()))

    rows = gather_per_example(model, pairs, collate, micro_batch_size, place, device, per_batch)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(pairs), 2)


class PrecomputedReference:
    """Reference log-probs computed once by the starting model, cached in the workdir."""

    def __init__(self, cache_file, pairs, collate, micro_batch_size, place, device):
        self.cache_file, self.pairs, self.collate = cache_file, pairs, collate
        self.micro_batch_size, self.place, self.device = micro_batch_size, place, device
        self.table: torch.Tensor | None = None

    def prepare(self, engine) -> None:
        """Runs before resuming: the engine still holds the starting (= reference) weights."""
        have = torch.tensor(float(self.cache_file.exists()), device=self.device)
        dist.all_reduce(have, op=dist.ReduceOp.MIN)  # every rank must take the same path
        if have.item() == 1:
            self.table = torch.load(self.cache_file, weights_only=True)
            log.info("reference log-probs from cache %s", self.cache_file)
            return
        with base_weights(engine):  # LoRA: the base alone, whatever the adapters have learnt
            self.table = compute_reference_logps(engine, self.pairs, self.collate, self.micro_batch_size,
                                                 self.place, self.device)
        if self.place.is_node_leader:
            with atomic_file(self.cache_file, "wb") as f:
                torch.save(self.table, f)

    def __call__(self, batch) -> torch.Tensor:
        index = batch["pair_index"].cpu()
        return torch.cat([self.table[index, 0], self.table[index, 1]]).to(batch["input_ids"].device)


LENGTH_NORMALISED = ("ipo", "simpo")  # losses defined on per-token average log-probs


def make_dpo_step(config: DpoConfig, reference):
    """reference(batch) -> summed reference log-probs [2n] of the batch's replies; None (and never
    called) for a reference-free loss."""

    def dpo_step(engine, batch):
        sums, counts = reply_logps(engine, batch)
        averages = sums / counts.clamp(min=1)
        n = batch["pair_index"].shape[0]
        if config.loss_type == "simpo":  # reference-free
            loss, chosen, rejected = simpo_loss(averages[:n], averages[n:], config.beta, config.simpo_gamma)
        else:
            policy, ref = sums, reference(batch)
            if config.loss_type in LENGTH_NORMALISED:
                policy, ref = averages, ref / counts.clamp(min=1)
            loss, chosen, rejected = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], config.beta,
                                              config.label_smoothing, config.loss_type)
        metrics = {
            "reward_accuracy": (chosen > rejected).float().mean(),
            "reward_margin": (chosen - rejected).mean(),
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
            "logps_chosen": sums[:n].detach().mean(),
            "logps_rejected": sums[n:].detach().mean(),
        }
        if config.rpo_alpha is not None:
            loss = loss + rpo_nll_loss(averages[:n], config.rpo_alpha)
            metrics["nll_chosen"] = -averages[:n].detach().mean()
        return loss, metrics

    return dpo_step


class AdapterlessReference:
    """LoRA's online reference: the policy's engine with its adapters switched off; bound to
    the engine once the loop has built it (train's `prepare`)."""

    def __init__(self):
        self.engine = None

    def prepare(self, engine) -> None:
        self.engine = engine

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        was_training = self.engine.module.training
        self.engine.eval()  # as a frozen copy runs: no dropout in the reference
        try:
            with base_weights(self.engine):
                return reply_logps(self.engine, batch)[0]
        finally:
            self.engine.train(was_training)


def online_reference(model_dir, config: DpoConfig, place: ProcessPlace, device):
    with sharded_model_init(config, place):
        frozen = load_causal_lm(model_dir, load_dtype(config), config.attn_implementation)
    frozen = build_frozen_engine(frozen, config, place, device)

    @torch.no_grad()
    def reference(batch):
        return reply_logps(frozen, batch)[0]

    return reference


def train_dpo(config: DpoConfig, ctx: StageContext, place: ProcessPlace, device) -> dict[str, float]:
    model_dir = ctx.input("model")
    tokenizer = load_tokenizer(model_dir)
    pairs, report, train_ids, eval_ids = read_training_pairs(ctx, tokenizer, config, progress=place.is_main)
    collate = pair_collator(pad_token_id(tokenizer), config.padding_free)
    with sharded_model_init(config, place):
        model = load_causal_lm(model_dir, load_dtype(config), config.attn_implementation, config.lora.quantize)
    model.config.use_cache = False
    if config.padding_free:
        check_padding_free(model, "dpo")
    model = trainable_model(model, config)

    precomputed = reference = prepare = None
    if not config.needs_reference:
        log.info("dpo: loss_type %s is reference-free: no reference model, no reference log-probs",
                 config.loss_type)
    elif config.reference == "precompute":
        material = {"model": input_fingerprint(ctx, "model"), "data": input_fingerprint(ctx, "train"),
                    "max_length": config.max_length, "dtype": load_dtype(config)}
        if config.lora.quantize != "none":  # the reference is then the quantized base
            material["quantize"] = config.lora.quantize
        if config.padding_free:  # the same numbers up to float rounding, computed the way the policy's are
            material["padding_free"] = True
        precomputed = PrecomputedReference(ctx.workdir / f"reference-logps-{digest(material)}.pt", pairs, collate,
                                           config.micro_batch_size, place, device)
        reference, prepare = precomputed, precomputed.prepare
    elif config.lora.enabled:
        log.info("dpo: LoRA: the reference is the policy with its adapters switched off (no second model)")
        reference = AdapterlessReference()
        prepare = reference.prepare
    else:
        reference = online_reference(model_dir, config, place, device)

    task = TrainTask(
        name="dpo",
        model=model,
        train_examples=[pairs[i] for i in train_ids],
        eval_examples=[pairs[i] for i in eval_ids],
        lengths=[len(pairs[i]) for i in train_ids],
        collate=collate,
        loss_fn=make_dpo_step(config, reference),
    )
    checkpoints = checkpoints_for(ctx, place)
    tracker = tracker_for(ctx, place, config)
    result = train(task, config, place, device, tracker=tracker, checkpoints=checkpoints,
                   prepare=prepare)
    write_model = export_causal_lm(result, config, place, tokenizer, model_dir)
    extra = {"reference_online": float(config.needs_reference and config.reference == "online"),
             "reference_free": float(not config.needs_reference),
             "reference_adapters_disabled": float(config.needs_reference and config.lora.enabled),
             **lora_metrics(model)}
    if precomputed is not None:
        table = precomputed.table
        extra.update(reference_chosen_logps_mean=table[:, 0].mean().item(),
                     reference_rejected_logps_mean=table[:, 1].mean().item())

    def write(folder):
        write_model(folder)
        if precomputed is not None:
            (folder / "reference_logps.json").write_text(json.dumps(
                {"pair_index_is": "position among usable pairs of input 'train'",
                 "chosen": table[:, 0].tolist(), "rejected": table[:, 1].tolist()}))

    return finish(ctx, place, checkpoints, write, {**result.metrics, **extra}, data=report,
                  split=(len(train_ids), len(eval_ids)), config=config, tracker=tracker)


def run(config: DpoConfig, ctx: StageContext) -> dict[str, float]:
    """The entry point of `xwin stage dpo`."""
    require_hardware(config, "dpo")
    return run_distributed(ctx, lambda place, device: train_dpo(config, ctx, place, device))
