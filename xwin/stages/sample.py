"""Stage `sample`: N distinct responses per prompt from the SFT model (Xwin-Set before scoring).

Sharding: shard i of K takes prompts[i::K] (strided, so every shard gets a similar mix of
short and long prompts) and commits its own part; `score` reads all parts.

Resuming: finished prompts are appended, `chunk_prompts` at a time, to a file in the stage's
workdir (durably: flush + fsync). A rerun of the same shard with the same config and inputs
skips every prompt already there, so a crash or preemption loses at most one chunk of work.
The engine is seeded with `seed + shard index`; a resumed shard restarts that stream, so its
remaining responses differ from an uninterrupted run's (equally valid samples).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from pydantic import Field
from tqdm.auto import tqdm

from xwin.artifacts.stage_io import StageContext
from xwin.core.errors import UserError
from xwin.data.io import ChunkedJsonlWriter, read_records, resume_partial, write_records
from xwin.data.schemas import MultiwiseRecord, Prompt, Response
from xwin.data.templating import tokenize_prompt
from xwin.sampling import EngineOptions, GenerationParams, open_engine, sample_distinct
from xwin.sampling.distinct import DistinctSamples
from xwin.sampling.generation import context_limit

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
PARTIAL_FILE = "samples.partial.jsonl"


class SampleConfig(EngineOptions, GenerationParams):
    """Engine options (backend, dtype, seed, tensor_parallel_size, max_model_len,
    gpu_memory_utilization, ...) and sampling settings (temperature, top_p, max_new_tokens) as
    flat fields, plus how many distinct responses to collect."""

    # Not `n`: YAML 1.1 readers (helm among them) take an unquoted `n:` key for `false`.
    responses_per_prompt: int = Field(
        64, ge=1, description="distinct responses per prompt (the paper: 64)"
    )
    max_rounds: int = Field(
        4, ge=1, description="sampling rounds to top duplicates / empty responses back up to responses_per_prompt"
    )
    chunk_prompts: int = Field(
        8, ge=1, description="prompts per flushed chunk: what a crash can lose at most"
    )

    def engine_options(self, seed_offset: int = 0) -> EngineOptions:
        fields = self.model_dump(include=set(EngineOptions.model_fields))
        return EngineOptions(**{**fields, "seed": self.seed + seed_offset})

    def generation_params(self) -> GenerationParams:
        return GenerationParams(**self.model_dump(include=set(GenerationParams.model_fields)))


def load_prompts(path: Path) -> list[Prompt]:
    """All prompts, validated; ids must be unique (resuming and merging go by id)."""
    prompts = list(read_records(path, Prompt))
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts, start=1):
        if p.id in seen:
            raise UserError(f"{path}: prompt {i}: id {p.id!r} repeats prompt {seen[p.id]}; ids must be unique")
        seen[p.id] = i
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def to_record(prompt: Prompt, samples: DistinctSamples, prompt_tokens: int) -> MultiwiseRecord:
    responses = [
        Response(text=g.text, finish_reason=g.finish_reason, num_tokens=g.num_tokens)
        for g in samples.generations
    ]
    meta = {**prompt.meta, "sampling": {**samples.as_meta(), "prompt_tokens": prompt_tokens}}
    return MultiwiseRecord(id=prompt.id, context=prompt.messages, responses=responses,
                           constraints=prompt.constraints, meta=meta)


def sampling_metrics(records: list[MultiwiseRecord], n: int) -> dict[str, float]:
    """Counts over the shard's output: responses, shortfalls by reason, finish reasons, tokens."""
    responses = [r for rec in records for r in rec.responses]
    reasons = Counter(rec.meta["sampling"].get("short_reason") for rec in records)
    reasons.pop(None, None)
    tokens = [r.num_tokens or 0 for r in responses]
    metrics = {
        "prompts": len(records),
        "responses": len(responses),
        "prompts_short": sum(1 for rec in records if len(rec.responses) < n),
        "duplicates_dropped": sum(rec.meta["sampling"]["duplicates"] for rec in records),
        "empty_dropped": sum(rec.meta["sampling"]["empty"] for rec in records),
        "finish_length_fraction": (
            sum(1 for r in responses if r.finish_reason == "length") / len(responses) if responses else 0.0
        ),
        "mean_response_tokens": sum(tokens) / len(tokens) if tokens else 0.0,
    }
    metrics.update({f"prompts_short_{reason}": count for reason, count in sorted(reasons.items())})
    return metrics


def run(config: SampleConfig, ctx: StageContext) -> dict[str, float]:
    model_dir = ctx.input("model")
    prompts_path = ctx.input("prompts")
    prompts = load_prompts(prompts_path)
    mine = prompts[ctx.shard_index :: ctx.shard_count]
    done = resume_partial(ctx.workdir / PARTIAL_FILE, ctx.work_fingerprint(config), MultiwiseRecord)
    resumed = sum(1 for p in mine if p.id in done)
    log.info("shard %d/%d: %d prompts, %d already done", ctx.shard_index, ctx.shard_count,
             len(mine), resumed)
    # Tokenize before loading the model: a shard with nothing left to do never starts an engine.
    from xwin.models.loading import load_tokenizer  # torch: not imported by the controller

    tokenizer = load_tokenizer(model_dir)
    limit = context_limit(model_dir, config)
    prompt_ids = {p.id: tokenize_prompt(tokenizer, p.messages) for p in mine if p.id not in done}
    too_long = {p.id for p in mine if p.id in prompt_ids and len(prompt_ids[p.id]) >= limit}
    if too_long:
        log.warning("%d prompts leave no room to generate within max_model_len=%d and are "
                    "skipped: %s", len(too_long), limit, ", ".join(sorted(too_long)[:10]))
    todo = [p for p in mine if p.id in prompt_ids and p.id not in too_long]
    generated_tokens = 0
    started = time.monotonic()
    if todo:
        params = config.generation_params()
        with open_engine(model_dir, config.engine_options(ctx.shard_index)) as engine, \
                ChunkedJsonlWriter(ctx.workdir / PARTIAL_FILE) as writer, \
                tqdm(total=len(mine), initial=resumed, desc="prompts sampled", unit="prompt") as bar:
            for start in range(0, len(todo), config.chunk_prompts):
                chunk = todo[start : start + config.chunk_prompts]
                samples = sample_distinct(engine, [prompt_ids[p.id] for p in chunk], config.responses_per_prompt,
                                          params, config.max_rounds)
                records = [to_record(p, s, len(prompt_ids[p.id])) for p, s in zip(chunk, samples)]
                writer.append(records)
                done.update((r.id, r) for r in records)
                generated_tokens += sum(g.num_tokens for s in samples for g in s.generations)
                bar.update(len(chunk))
    seconds = time.monotonic() - started

    records = [done[p.id] for p in mine if p.id in done]
    out = ctx.workdir / "out"
    write_records(out / SAMPLES_FILE, records)
    metrics = sampling_metrics(records, config.responses_per_prompt)
    metrics.update({
        "prompts_resumed": resumed,
        "prompts_generated": len(todo),
        "prompts_too_long": len(too_long),
        "seconds": round(seconds, 3),
        "kept_tokens_per_s": round(generated_tokens / seconds, 2) if todo and seconds > 0 else 0.0,
    })
    (out / "stats.json").write_text(json.dumps({**metrics, "too_long_ids": sorted(too_long)}, indent=2))
    ctx.commit(out, metrics)
    return metrics
