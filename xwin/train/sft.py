"""Stages `sft` and `rs`: supervised finetuning on multi-turn conversations, loss on assistant
tokens only (Xwin-LM-SFT); rs is rejection-sampling finetuning (Xwin-LM-RS), the same code on
the conversations the select stage built from each prompt's best-of-N response.

Inputs: `model` (HF folder: the base model for sft, the SFT model for rs) and `train`
(conversations JSONL: a file, a folder or a sharded artifact). Output: an HF folder
(safetensors + tokenizer + metrics.jsonl). Configs: `sft_config.py` (torch-free, read by the
controller); this module is imported by the stage process only."""

from __future__ import annotations

import torch

from xwin.artifacts.stage_io import StageContext
from xwin.core.errors import UserError
from xwin.data.dataset import SftCollator, build_sft_dataset, pad_token_id
from xwin.models.loading import load_causal_lm, load_tokenizer
from xwin.train.config import TrainConfig
from xwin.train.data import PackedSftCollator, split_train_eval
from xwin.train.deepspeed_setup import load_dtype, sharded_model_init
from xwin.train.harness import (
    checkpoints_for,
    export_causal_lm,
    finish,
    read_input_records,
    require_hardware,
    run_distributed,
    tracker_for,
)
from xwin.train.launch import ProcessPlace
from xwin.train.loop import TrainTask, train
from xwin.train.lora import lora_metrics, trainable_model
from xwin.train.losses import sft_loss
from xwin.train.sft_config import RsConfig, SftConfig


def sft_step(engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Token cross-entropy over assistant tokens. Packed rows pass position ids (no mask), which
    transformers turns into attention that stays inside each conversation."""
    inputs = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    logits = engine(**inputs).logits
    return sft_loss(logits, batch["labels"]), {}


def finetune(config: TrainConfig, ctx: StageContext, place: ProcessPlace, device: torch.device) -> dict[str, float]:
    """The whole sft/rs run on one worker."""
    name = ctx.spec.stage
    model_dir = ctx.input("model")
    tokenizer = load_tokenizer(model_dir)
    records = read_input_records(ctx, "train", "conversations")
    samples, report = build_sft_dataset(records, tokenizer, config.max_length, progress=place.is_main)
    if not samples:
        raise UserError(f"stage {name}: no usable conversation in input 'train' ({report.as_dict()})")
    train_ids, eval_ids = split_train_eval(len(samples), config.eval_fraction, config.seed)
    torch.manual_seed(config.seed)
    with sharded_model_init(config, place):
        model = load_causal_lm(model_dir, load_dtype(config), config.attn_implementation, config.lora.quantize)
    model.config.use_cache = False
    model = trainable_model(model, config)
    pad = pad_token_id(tokenizer)
    task = TrainTask(
        name=name,
        model=model,
        train_examples=[samples[i] for i in train_ids],
        eval_examples=[samples[i] for i in eval_ids],
        lengths=[len(samples[i]) for i in train_ids],
        collate=SftCollator(pad),
        collate_rows=PackedSftCollator(pad),
        loss_fn=sft_step,
    )
    checkpoints = checkpoints_for(ctx, place)
    tracker = tracker_for(ctx, place, config)
    result = train(task, config, place, device, tracker=tracker, checkpoints=checkpoints)
    write = export_causal_lm(result, config, place, tokenizer, model_dir)
    return finish(ctx, place, checkpoints, write, {**result.metrics, **lora_metrics(model)},
                  data=report.as_dict(), split=(len(train_ids), len(eval_ids)), config=config,
                  tracker=tracker)


def run(config: SftConfig | RsConfig, ctx: StageContext) -> dict[str, float]:
    """The entry point of both stages (`xwin stage sft|rs`)."""
    require_hardware(config, ctx.spec.stage)
    return run_distributed(ctx, lambda place, device: finetune(config, ctx, place, device))
