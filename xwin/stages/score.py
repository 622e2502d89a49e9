"""Stage `score`: the reward model scores every (context, response) of the sampled set; the
result is Xwin-Set (a multiwise set with scores).

Sharding: the input may come in parts (one per sample shard); they are read in shard order as
one list, and shard i of K scores records[i::K] and commits its own part. With K equal to the
sample stage's shard count each score shard gets about one sample shard's worth of work.

Resume: scored contexts are flushed to a partial file every `chunk_contexts`; an attempt killed
midway (preempted pod, kill -9) restarts after the last flushed chunk, as sampling does.

Backends: `hf` (transformers in this process, length-sorted batches capped by `batch_size` rows
and `max_batch_tokens` padded tokens) or `vllm` (vLLM's pooling runner, `tensor_parallel_size`
GPUs per model); `auto` is vLLM where it is installed and runs the folder's architecture, else
HF. Both score the same token ids and agree to ~1e-5 in float32 (9e-6 on SmolLM2-135M); the metrics name the backend
used (`backend`, `backend_reason`).

The key: in float32 how the rewards are computed (backend, batching, tensor parallelism, the
attention kernel, chunking) moves a reward by ~1e-5, far below any margin select acts on, so
those fields (EXECUTION_FIELDS) are left out of the stage's key: switching to vLLM reuses the
HF run's scores. In bfloat16/float16 a reward moves by up to ~0.1 with the batch and kernel it
is computed in, so there they are part of the key, as the dtype always is.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm.auto import tqdm

from xwin.artifacts.stage_io import StageContext
from xwin.core.config import ATTN_DESCRIPTION, AttnImplementation, StrictModel
from xwin.core.errors import UserError
from xwin.data.io import ChunkedJsonlWriter, read_records, resume_partial, write_records
from xwin.data.schemas import MultiwiseRecord
from xwin.data.selection import summary
from xwin.data.templating import tokenize_prompt_and_reply

log = logging.getLogger(__name__)

SCORED_FILE = "scored.jsonl"
PARTIAL_FILE = "scored.partial.jsonl"
# Fields that decide how the rewards are computed, not what they are (see the module docstring).
EXECUTION_FIELDS = frozenset({"backend", "tensor_parallel_size", "gpu_memory_utilization", "batch_size",
                              "max_batch_tokens", "sort_by_length", "attn_implementation", "chunk_contexts"})


def key_config(config: dict) -> dict:
    """The score config as it enters the stage's key: without EXECUTION_FIELDS in float32."""
    if config.get("dtype") != "float32":
        return config
    return {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}


class ScoreConfig(StrictModel):
    backend: Literal["auto", "hf", "vllm"] = Field(
        "hf", description="hf (transformers), vllm (vLLM's pooling runner; tensor parallel) or auto "
        "(vllm where installed and it runs the model's architecture, else hf; the metrics say which)")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one reward model is split over")
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="vllm: share of accelerator memory; None = 0.9 on a GPU, "
        "0.3 on a CPU (a share of NUMA node 0's memory there)")
    batch_size: int = Field(64, ge=1, description="hf: sequences per reward-model forward pass, at most")
    max_batch_tokens: int = Field(
        16384, ge=16, description="hf: padded tokens (rows x longest) per forward pass, at most; "
        "vllm: its max_num_batched_tokens (raised to max_length if below: vLLM prefills a sequence "
        "whole). A longer sequence is a batch of its own")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "float32",
        description="reward model dtype. float32 by default: in bfloat16 a score moves by up to "
        "~0.1 with the batch it is computed in (measured on SmolLM2-135M, score std ~0.5), "
        "enough to reorder near-tied responses; bfloat16 halves memory and time on a GPU",
    )
    max_length: int = Field(
        2048,
        ge=16,
        description="context + response tokens, at most; longer contexts lose their oldest "
        "turns first (the response is never cut); a response that cannot fit is dropped",
    )
    sort_by_length: bool = Field(
        True, description="batch sequences of similar length together (less padding)"
    )
    attn_implementation: AttnImplementation = Field("sdpa", description=ATTN_DESCRIPTION)
    chunk_contexts: int = Field(
        256, ge=1, description="contexts scored between flushes to the resumable partial file: "
        "a killed attempt resumes after the last flushed chunk")

    def scorer_options(self):
        """The reward scorer's settings (imports xwin.models: call in the stage process only)."""
        from xwin.models.scorer_factory import ScorerOptions

        return ScorerOptions(
            backend=self.backend, dtype=self.dtype, max_length=self.max_length, batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens, sort_by_length=self.sort_by_length,
            attn_implementation=self.attn_implementation, tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization)


def read_parts(parts: list[Path]) -> list[MultiwiseRecord]:
    """Records of every part in order (a part is a folder of *.jsonl or one file)."""
    records = [r for part in parts for r in read_records(part, MultiwiseRecord)]
    if not records:
        raise UserError(f"no records in {', '.join(map(str, parts))}")
    return records


def score_records(records: list[MultiwiseRecord], scorer, tokenizer, config: ScoreConfig) -> list[MultiwiseRecord]:
    """The records with every response scored by `scorer` (a RewardScorer); a response whose
    tokens cannot fit is left out, and each record's meta["scoring"] counts what was dropped or
    cut."""
    from xwin.models.scoring import NonFiniteRewards

    sequences: list[list[int]] = []
    owners: list[tuple[int, int]] = []  # (record, response) of each sequence
    counts = [{"dropped_too_long": 0, "context_truncated": 0} for _ in records]
    for r_index, record in enumerate(records):
        for k, response in enumerate(record.responses):
            sample = tokenize_prompt_and_reply(tokenizer, record.context, response.text, config.max_length)
            if sample is None:
                counts[r_index]["dropped_too_long"] += 1
                continue
            counts[r_index]["context_truncated"] += int(sample.context_truncated)
            sequences.append(sample.input_ids)
            owners.append((r_index, k))
    try:
        scores = scorer.score(sequences)
    except NonFiniteRewards as e:
        record, k = owners[e.indices[0]]
        raise UserError(
            f"reward model: {len(e.indices)} of {e.total} scores in this chunk of {len(records)} "
            f"contexts are not finite (NaN/Inf); first: record {records[record].id!r}, response "
            f"{k} scored {e.values[0]}. The reward model has diverged (or overflows in dtype "
            f"{config.dtype}): retrain it (lower learning rate, float32) or score in float32; "
            "nothing was written"
        ) from None
    kept: dict[tuple[int, int], float] = dict(zip(owners, scores))
    return [
        record.model_copy(update={
            "responses": [resp.model_copy(update={"score": kept[(r_index, k)]})
                          for k, resp in enumerate(record.responses) if (r_index, k) in kept],
            "meta": {**record.meta, "scoring": counts[r_index]},
        })
        for r_index, record in enumerate(records)
    ]


def run(config: ScoreConfig, ctx: StageContext) -> dict[str, float]:
    # torch: imported by the stage process, never by the controller that reads ScoreConfig
    from xwin.models.loading import load_tokenizer
    from xwin.models.scorer_factory import open_reward_scorer

    model_dir = ctx.input("reward_model")
    mine = read_parts(ctx.input_parts("samples"))[ctx.shard_index :: ctx.shard_count]
    if repeated := sorted(i for i, n in Counter(r.id for r in mine).items() if n > 1):
        raise UserError(f"input 'samples': record ids must be unique; repeated: {', '.join(repeated[:10])}")
    done = resume_partial(ctx.workdir / PARTIAL_FILE, ctx.work_fingerprint(config), MultiwiseRecord)
    todo = [r for r in mine if r.id not in done]
    log.info("scoring %d contexts (%d already scored by an earlier attempt)", len(todo), len(mine) - len(todo))

    started = time.monotonic()
    scored_now = 0
    backend, why = "none", "nothing left to score"
    if todo:
        tokenizer = load_tokenizer(model_dir)
        with open_reward_scorer(model_dir, config.scorer_options()) as (scorer, why), \
                ChunkedJsonlWriter(ctx.workdir / PARTIAL_FILE) as writer, \
                tqdm(total=len(mine), initial=len(mine) - len(todo), desc="contexts scored", unit="context") as bar:
            backend = scorer.backend
            for begin in range(0, len(todo), config.chunk_contexts):
                chunk = score_records(todo[begin : begin + config.chunk_contexts], scorer, tokenizer, config)
                writer.append(chunk)
                done.update((r.id, r) for r in chunk)
                scored_now += sum(len(r.responses) for r in chunk)
                bar.update(len(chunk))
    seconds = time.monotonic() - started

    scored = [done[r.id] for r in mine]
    scores = [resp.score for r in scored for resp in r.responses]
    out = ctx.workdir / "out"
    write_records(out / SCORED_FILE, scored)
    stats = summary(scores)
    metrics = {
        "contexts": len(scored),
        "contexts_resumed": len(mine) - len(todo),
        "responses_scored": len(scores),
        "responses_dropped_too_long": sum(r.meta["scoring"]["dropped_too_long"] for r in scored),
        "contexts_truncated": sum(r.meta["scoring"]["context_truncated"] for r in scored),
        "score_mean": stats.get("mean", 0.0),
        "score_std": stats.get("std", 0.0),
        "seconds": round(seconds, 3),
        "sequences_per_s": round(scored_now / seconds, 2) if scored_now and seconds > 0 else 0.0,
        "backend": backend,
        "backend_reason": why,
    }
    (out / "stats.json").write_text(json.dumps({**metrics, "scores": stats}, indent=2))
    ctx.commit(out, metrics)
    return metrics
