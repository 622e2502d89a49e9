"""Stage `rm`: the reward model (Xwin-RM). The body of a language model with a scalar value head,
trained on preference pairs with the Bradley-Terry loss; both replies of a pair go through one
forward pass (padded rows, or with `padding_free: true` one row without padding, the reward read
at each sequence's last token: `xwin.train.pairs`). Multi-turn contexts are kept (the oldest
turns give way when too long).

Inputs: `model` (HF folder: the SFT model or the base) and `train` (PreferencePair JSONL).
Output: a reward-model folder, a standard AutoModelForSequenceClassification folder that
transformers, TRL and vLLM load as it is (`xwin.models.reward` says how; `load_reward_model`
loads it), with held-out pairwise accuracy and reward statistics in its metrics.
Config: `rm_config.py` (torch-free, read by the controller)."""

from __future__ import annotations

import math

import torch

from xwin.artifacts.stage_io import StageContext
from xwin.data.dataset import pad_token_id
from xwin.models.loading import load_tokenizer
from xwin.models.reward import RewardModel
from xwin.train.checkpoint import gathered_state_dict
from xwin.train.deepspeed_setup import load_dtype, sharded_model_init
from xwin.train.harness import (
    checkpoints_for,
    finish,
    read_training_pairs,
    require_hardware,
    run_distributed,
    tracker_for,
)
from xwin.train.launch import ProcessPlace
from xwin.train.loop import TrainTask, gather_per_example, train
from xwin.train.lora import adapter_writer, has_adapters, lora_metrics, trainable_model
from xwin.train.losses import bradley_terry_loss
from xwin.train.pairs import PairExample, check_padding_free, is_padding_free, model_inputs, pair_collator
from xwin.train.rm_config import RmConfig

VALUE_HEAD = "value_head"  # RewardModel's scalar head


def rewards_of(engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards [n] each, from padded or padding-free batches alike."""
    inputs = model_inputs(batch)
    del inputs["use_cache"]  # the reward model never caches
    if is_padding_free(batch):
        inputs["cu_seqlens"] = batch["cu_seqlens"]
    rewards = engine(**inputs)
    n = batch["pair_index"].shape[0]
    return rewards[:n], rewards[n:]


def make_rm_step(use_score_margin: bool):
    def rm_step(engine, batch):
        chosen, rejected = rewards_of(engine, batch)
        margin = torch.nan_to_num(batch["score_margin"], nan=0.0) if use_score_margin else None
        loss, accuracy = bradley_terry_loss(chosen, rejected, margin)
        return loss, {
            "accuracy": accuracy,
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
            "reward_margin": (chosen - rejected).mean(),
        }

    return rm_step


def held_out_rewards(engine, pairs: list[PairExample], collate, micro_batch_size: int, place: ProcessPlace,
                     device) -> list[tuple[float, float]]:
    """(chosen, rejected) reward of every held-out pair, computed by all ranks."""
    def per_batch(model, batch):
        chosen, rejected = rewards_of(model, batch)
        return list(zip(chosen.tolist(), rejected.tolist()))

    return gather_per_example(engine, pairs, collate, micro_batch_size, place, device, per_batch)


def reward_statistics(rewards: list[tuple[float, float]]) -> dict[str, float]:
    def mean_std(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

    chosen = [c for c, _ in rewards]
    rejected = [r for _, r in rewards]
    stats = {"eval_accuracy": sum(c > r for c, r in rewards) / len(rewards), "eval_pairs": len(rewards)}
    for name, values in (("reward", chosen + rejected), ("chosen_reward", chosen), ("rejected_reward", rejected),
                         ("reward_margin", [c - r for c, r in rewards])):
        stats[f"eval_{name}_mean"], stats[f"eval_{name}_std"] = mean_std(values)
    return stats


def train_reward_model(config: RmConfig, ctx: StageContext, place: ProcessPlace, device) -> dict[str, float]:
    model_dir = ctx.input("model")
    tokenizer = load_tokenizer(model_dir)
    pairs, report, train_ids, eval_ids = read_training_pairs(ctx, tokenizer, config, progress=place.is_main)
    torch.manual_seed(config.seed)  # the value head's init, identical on every rank
    with sharded_model_init(config, place):
        model = RewardModel.from_language_model(model_dir, load_dtype(config), config.attn_implementation,
                                                config.lora.quantize)
    model.config.use_cache = False
    if config.padding_free:
        check_padding_free(model.body, "rm")
    model = trainable_model(model, config, fully_trained=[VALUE_HEAD])  # LoRA: the head trains whole
    collate = pair_collator(pad_token_id(tokenizer), config.padding_free)
    eval_pairs = [pairs[i] for i in eval_ids]
    task = TrainTask(
        name="rm",
        model=model,
        train_examples=[pairs[i] for i in train_ids],
        eval_examples=eval_pairs,
        lengths=[len(pairs[i]) for i in train_ids],
        collate=collate,
        loss_fn=make_rm_step(config.use_score_margin),
    )
    checkpoints = checkpoints_for(ctx, place)
    tracker = tracker_for(ctx, place, config)
    result = train(task, config, place, device, tracker=tracker, checkpoints=checkpoints)
    stats = {}
    if eval_pairs:
        stats = reward_statistics(held_out_rewards(result.engine, eval_pairs, collate, config.micro_batch_size,
                                                   place, device))
    info = {"max_length": config.max_length, **{k: v for k, v in stats.items() if k.startswith("eval_reward_")}}
    module = result.engine.module
    if has_adapters(module):
        write = adapter_writer(
            module, config.lora, config.zero_stage, place.is_main,
            load_base=lambda: RewardModel.from_language_model(model_dir, load_dtype(config),
                                                              config.attn_implementation),
            save_model=lambda merged, folder: merged.save(folder, tokenizer, info=info))
    else:
        state = gathered_state_dict(module, config.zero_stage, place.is_main)

        def write(folder):
            module.save(folder, tokenizer, state_dict=state, info=info)

    return finish(ctx, place, checkpoints, write, {**result.metrics, **stats, **lora_metrics(model)},
                  data=report, split=(len(train_ids), len(eval_ids)), config=config, tracker=tracker,
                  kind="reward_model")


def run(config: RmConfig, ctx: StageContext) -> dict[str, float]:
    """The entry point of `xwin stage rm`."""
    require_hardware(config, "rm")
    return run_distributed(ctx, lambda place, device: train_reward_model(config, ctx, place, device))
