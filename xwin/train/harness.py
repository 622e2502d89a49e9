"""What every training stage (`sft`, `rs`, `rm`, `dpo`) does around the shared loop: join the
process group (or start this node's workers), read its inputs, open its tracker, and the one
trainer tail: the manifest's metrics, the output folder (weights, metrics.jsonl, TensorBoard
events, the model card) written atomically and committed once, from rank 0."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xwin.artifacts.folders import write_folder_atomically
from xwin.artifacts.stage_io import StageContext
from xwin.core.digests import digest, fingerprint_path
from xwin.core.errors import UserError
from xwin.data.io import read_records
from xwin.models.card import base_model_of, model_card, write_hub_files
from xwin.models.loading import load_causal_lm
from xwin.train.checkpoint import Checkpoints, attempt_name, gathered_state_dict
from xwin.train.config import TrainConfig
from xwin.train.data import split_train_eval
from xwin.train.deepspeed_setup import load_dtype
from xwin.train.launch import (
    ProcessPlace,
    barrier,
    init_distributed,
    locate_process,
    shutdown,
    spawn_workers,
)
from xwin.train.loop import TrainResult
from xwin.train.lora import adapter_writer, has_adapters
from xwin.train.pairs import tokenize_pairs
from xwin.train.tracking import METRICS_FILE, TENSORBOARD_DIR, Tracker, open_tracker

log = logging.getLogger(__name__)


def run_distributed(ctx: StageContext,
                    body: Callable[[ProcessPlace, torch.device], dict[str, float]]) -> dict[str, float]:
    """Run `body(place, device)` as one worker of the job; or, on a node that must start several
    workers, start them (each re-runs this stage) and return the committed output's metrics."""
    place = locate_process()
    if place.spawn_workers:
        spawn_workers(place)
        manifest = ctx.store.manifest(ctx.output_key)
        return manifest.metadata.get("metrics", {}) if manifest is not None else {}
    # StageContext read RANK/WORLD_SIZE before an Indexed-Job pod's rank was known
    ctx.rank, ctx.world_size = place.rank, place.world_size
    device = init_distributed(place)
    try:
        return body(place, device)
    finally:
        shutdown()


def require_hardware(config: TrainConfig, stage: str) -> None:
    """Exit 2 before loading anything when the config needs what this machine lacks (QLoRA,
    flash attention); the controller asks the same at plan time where it can."""
    if problems := config.hardware_problems():
        raise UserError(f"stage {stage}: " + "; ".join(problems))


def checkpoints_for(ctx: StageContext, place: ProcessPlace) -> Checkpoints:
    """This attempt's checkpoints: the controller's attempt number comes with the launch
    (XWIN_STAGE_ATTEMPT, the same in every rank); a stage run by hand is attempt 1."""
    attempt = os.environ.get("XWIN_STAGE_ATTEMPT", "1")
    return Checkpoints(ctx.store, ctx.output_key, ctx.workdir / "checkpoints", place,
                       producer=f"{ctx.spec.stage}-checkpoint",
                       attempt=attempt_name(ctx.spec.run_id, int(attempt) if attempt.isdigit() else 1))


def metrics_path(ctx: StageContext) -> Path:
    return ctx.workdir / METRICS_FILE


def tracker_for(ctx: StageContext, place: ProcessPlace, config: TrainConfig) -> Tracker:
    """The stage's tracker: metrics.jsonl and TensorBoard events in the workdir (shipped in the
    output by `finish`), and the configured MLflow/W&B runs, named `<run>/<stage>`."""
    return open_tracker(ctx.workdir, place.is_main, config.tracking, run_name=f"{ctx.spec.run_id}/{ctx.spec.stage}",
                        group=ctx.spec.run_id, stage=ctx.spec.stage)


# The settings a model card lists (a stage's own fields, such as dpo's beta, are added to them).
CARD_SETTINGS = ("learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "epochs", "max_steps",
                 "micro_batch_size", "gradient_accumulation_steps", "max_length", "batching", "weight_decay",
                 "max_grad_norm", "zero_stage", "bf16", "gradient_checkpointing", "seed")


def card_hyperparameters(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """The settings that decide a trained model, for its card: the shared ones, the global batch
    and every field the stage's config adds to TrainConfig."""
    values = config.model_dump(mode="json")
    own = [name for name in type(config).model_fields if name not in TrainConfig.model_fields]
    out = {name: values[name] for name in (*CARD_SETTINGS, *own) if values.get(name) is not None}
    out["global_batch_size"] = config.micro_batch_size * config.gradient_accumulation_steps * world_size
    out["processes"] = world_size
    return out


def card_for(ctx: StageContext, config: TrainConfig, metrics: dict[str, float], kind: str):
    """The model card of this stage's output, from its config, its input model and its metrics."""
    started_from = ctx.spec.inputs.get("model")
    data = {k[len("split_"):] if k.startswith("split_") else k: int(v) if float(v).is_integer() else v
            for k, v in metrics.items() if k.startswith(("split_", "data_"))}
    return model_card(
        stage=ctx.spec.stage, kind=kind,
        base_model=base_model_of(ctx.input("model"), started_from or "unknown"),
        started_from=started_from, run=ctx.spec.run_id, data=data,
        hyperparameters=card_hyperparameters(config, int(metrics.get("world_size", 1))),
        metrics={k: v for k, v in metrics.items() if not k.startswith(("split_", "data_"))},
    )


def read_input_records(ctx: StageContext, name: str, kind: str) -> list:
    """Every validated record of input `name`, over all of its shards."""
    return [record for part in ctx.input_parts(name) for record in read_records(part, kind)]


def read_training_pairs(ctx: StageContext, tokenizer: Any, config: Any, *, progress: bool):
    """The RM and DPO stages' data: input 'train' tokenized as pairs and split into train/eval
    indices. Fewer than two usable pairs is a UserError that says why pairs were dropped."""
    records = read_input_records(ctx, "train", "pairs")
    pairs, report = tokenize_pairs(records, tokenizer, config.max_length, progress=progress)
    if len(pairs) < 2:
        raise UserError(f"stage {ctx.spec.stage}: {len(pairs)} usable pairs in input 'train' ({report})")
    train_ids, eval_ids = split_train_eval(len(pairs), config.eval_fraction, config.seed)
    return pairs, report, train_ids, eval_ids


def input_fingerprint(ctx: StageContext, name: str) -> str:
    """Identifies an input's content cheaply: the commit id of an artifact, else the names, sizes
    and modification times of a local path's files."""
    ref = ctx.spec.inputs[name]
    if (manifest := ctx.store.manifest(ref.partition("#")[0])) is not None:
        return f"{ref}@{manifest.commit_id}"
    return f"{ref}@{digest(fingerprint_path(Path(ref)))}"


def flat_metrics(**groups: dict[str, Any]) -> dict[str, float]:
    """Numbers only (the manifest's metrics); nested dicts become prefix_key."""
    out: dict[str, float] = {}
    for prefix, values in groups.items():
        for key, value in values.items():
            name = f"{prefix}_{key}" if prefix else key
            if isinstance(value, dict):
                out.update(flat_metrics(**{name: value}))
            elif isinstance(value, (int, float, bool)):
                out[name] = float(value)
    return out


def export_causal_lm(result: TrainResult, config: TrainConfig, place: ProcessPlace, tokenizer: Any,
                     model_dir: Path) -> Callable[[Path], None]:
    """Collective (ZeRO-3 gathers shards): returns the writer of an HF folder (safetensors +
    tokenizer) that transformers and vLLM load unchanged; the writer is for rank 0 only. A LoRA
    run writes its adapters merged into the base read again from `model_dir` (xwin.train.lora)."""
    module = result.engine.module

    def save(model: Any, folder: Path, state: dict | None = None) -> None:
        model.config.use_cache = True  # training switched it off; generation wants it
        model.save_pretrained(folder, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    if has_adapters(module):
        return adapter_writer(module, config.lora, config.zero_stage, place.is_main, save_model=save,
                              load_base=lambda: load_causal_lm(model_dir, load_dtype(config),
                                                               config.attn_implementation))
    state = gathered_state_dict(module, config.zero_stage, place.is_main)
    return lambda folder: save(module, folder, state)


def finish(ctx: StageContext, place: ProcessPlace, checkpoints: Checkpoints | None,
           write_output: Callable[[Path], None], metrics: dict[str, Any], *, data: dict[str, Any],
           split: tuple[int, int], config: TrainConfig, tracker: Tracker,
           kind: str = "causal_lm") -> dict[str, float]:
    """The trainer tail. `metrics`: the run's numbers (the loop's and the trainer's own); `data`:
    the input report (kept, dropped); `split`: (train, eval) examples; `kind`: causal_lm or
    reward_model (the card's pipeline tag). The tracker gets the final metrics and is closed;
    rank 0 writes the output folder atomically (with metrics.jsonl, the TensorBoard events and
    the model card) and commits it, the run's checkpoints are deleted, and every rank returns
    the flat metrics the manifest holds."""
    metrics = flat_metrics(**{"": metrics}, data=data, split={"train": split[0], "eval": split[1]})
    metrics["world_size"] = place.world_size
    tracker.log_summary(metrics)
    tracker.close()
    if place.is_main:
        out_dir = ctx.workdir / "output"

        def write(folder: Path) -> None:
            write_output(folder)
            if metrics_path(ctx).exists():
                shutil.copyfile(metrics_path(ctx), folder / METRICS_FILE)
            if (events := ctx.workdir / TENSORBOARD_DIR).is_dir():
                shutil.copytree(events, folder / TENSORBOARD_DIR)
            write_hub_files(folder, card_for(ctx, config, metrics, kind))

        write_folder_atomically(out_dir, write)
        ctx.commit(out_dir, metrics)
        log.info("committed %s", ctx.output_key)
    barrier()
    if checkpoints is not None:
        checkpoints.clear()
    return metrics
