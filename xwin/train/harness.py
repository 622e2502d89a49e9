"""What every training stage (`sft`, `rs`, `rm`, `dpo`) does around the shared loop: join the
process group (or start this node's workers), read its inputs, and the one trainer tail: the
manifest's metrics, the output folder written atomically and committed once, from rank 0."""

from __future__ import annotations

import logging
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
from xwin.models.loading import load_causal_lm
from xwin.train.checkpoint import Checkpoints, gathered_state_dict
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

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


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
    return Checkpoints(ctx.store, ctx.output_key, ctx.workdir / "checkpoints", place,
                       producer=f"{ctx.spec.stage}-checkpoint")


def metrics_path(ctx: StageContext) -> Path:
    return ctx.workdir / METRICS_FILE


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
           split: tuple[int, int]) -> dict[str, float]:
    """The trainer tail. `metrics`: the run's numbers (the loop's and the trainer's own); `data`:
    the input report (kept, dropped); `split`: (train, eval) examples. Rank 0 writes the output
    folder atomically (with metrics.jsonl) and commits it, the run's checkpoints are deleted, and
    every rank returns the flat metrics the manifest holds."""
    metrics = flat_metrics(**{"": metrics}, data=data, split={"train": split[0], "eval": split[1]})
    metrics["world_size"] = place.world_size
    if place.is_main:
        out_dir = ctx.workdir / "output"

        def write(folder: Path) -> None:
            write_output(folder)
            if metrics_path(ctx).exists():
                shutil.copyfile(metrics_path(ctx), folder / METRICS_FILE)

        write_folder_atomically(out_dir, write)
        ctx.commit(out_dir, metrics)
        log.info("committed %s", ctx.output_key)
    barrier()
    if checkpoints is not None:
        checkpoints.clear()
    return metrics
